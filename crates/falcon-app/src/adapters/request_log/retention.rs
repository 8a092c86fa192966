//! Keeping the request log within its storage: partitions for the coming days, and the
//! rows past retention removed off the request path.
//!
//! Retention is counted in whole UTC days: with `REQUEST_LOG_RETENTION_DAYS=N`, a row stays
//! while its day is today or one of the N days before it, so every row is kept at least N
//! days and gone within N + 1. (The runbook's `DELETE … WHERE created_at < NOW() - INTERVAL
//! 'N days'` would remove everything this removes, and a little more.)
//!
//! Postgres: `inference_logs` is partitioned by day (migration 0005). Each run creates the
//! partitions for today and the next `DAYS_AHEAD` days, moving over any rows the default
//! partition took for them (and gives a partition to any other day the default partition
//! holds rows of, such as a replayed spool's), deletes the default partition's rows past
//! retention, and drops the partitions that end at or before the cutoff: a
//! dropped partition is gone at once, with no dead rows left for VACUUM. One worker does it
//! at a time (an advisory lock held by the run's transaction), it locks the table before
//! any partition (as `LOCK TABLE` does, so an operator's lock and a run queue rather than
//! deadlock), and no statement waits more than `LOCK_TIMEOUT` for a lock, so a long query
//! never makes the writer queue behind a waiting `DROP`. SQLite: expired rows are deleted
//! `SQLITE_DELETE_BATCH` at a time, each batch its own statement so the writer gets the one
//! connection in between, then an incremental vacuum gives the freed pages back to the file
//! system.

use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use sqlx::{PgPool, SqlitePool};

use super::Sink;

/// Days after today that get their partition ahead of time.
pub const DAYS_AHEAD: u64 = 3;
/// The most a maintenance statement waits for a lock before giving up until the next run.
const LOCK_TIMEOUT: &str = "2s";
/// `pg_try_advisory_xact_lock` key of the maintenance run ("FALCONRL" in ASCII).
const LOCK_KEY: i64 = 0x4641_4c43_4f4e_524c;
/// Expired SQLite rows deleted by one statement.
const SQLITE_DELETE_BATCH: i64 = 2_000;
/// Pause between SQLite delete batches: the writer's batches go in between.
const SQLITE_PAUSE: Duration = Duration::from_millis(5);
/// The partition for days with none of their own.
const DEFAULT_PARTITION: &str = "inference_logs_default";
/// Days of the default partition's rows given a partition in one run.
const MAX_STRAY_DAYS: usize = 400;

/// How long rows are kept: `None` keeps them forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(pub Option<u32>);

impl Retention {
    /// `REQUEST_LOG_RETENTION_DAYS`: 0 keeps rows forever.
    pub fn days(days: u32) -> Self {
        Self((days > 0).then_some(days))
    }

    /// The start of the oldest day kept at `now`: rows before it are past retention.
    pub fn cutoff(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let days = self.0?;
        let kept_from = now.date_naive().checked_sub_days(Days::new(u64::from(days)))?;
        Some(day_start(kept_from))
    }
}

/// What one maintenance run did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Maintenance {
    /// Another worker held the maintenance lock: nothing was done.
    pub skipped: bool,
    /// Partitions created (Postgres).
    pub created: Vec<String>,
    /// Partitions dropped (Postgres), with the planner's estimate of their rows.
    pub dropped: Vec<Dropped>,
    /// Rows deleted (SQLite), or in the dropped partitions' estimates and the default
    /// partition's expired rows (Postgres).
    pub rows: u64,
    /// Postgres: expired rows deleted from the default partition (rows of days that had no
    /// partition of their own).
    pub stray_rows: u64,
    /// Operations that failed (a lock not granted in time): tried again at the next run.
    pub failed: Vec<String>,
}

/// A partition past retention.
#[derive(Debug, Clone, PartialEq)]
pub struct Dropped {
    pub name: String,
    /// Its rows were all before this instant.
    pub before: DateTime<Utc>,
    pub rows_estimate: u64,
}

/// 00:00 UTC of `day`.
fn day_start(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(NaiveTime::MIN).and_utc()
}

/// The name of `day`'s partition: `inference_logs_p20261206`.
pub fn partition_name(day: NaiveDate) -> String {
    format!("inference_logs_p{}", day.format("%Y%m%d"))
}

/// A partition of `inference_logs` as the catalog describes it; `None` bounds are
/// MINVALUE / MAXVALUE (or, for the default partition, none at all).
#[derive(Debug, sqlx::FromRow)]
pub struct Partition {
    pub name: String,
    pub is_default: bool,
    pub lower: Option<DateTime<Utc>>,
    pub upper: Option<DateTime<Utc>>,
    pub rows_estimate: f32,
}

impl Partition {
    /// Whether any time in `[from, to)` falls in this partition's range.
    fn overlaps(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        !self.is_default && self.lower.is_none_or(|l| l < to) && self.upper.is_none_or(|u| u > from)
    }
}

/// The partitions of `inference_logs`, oldest end first (none when the table is missing or
/// not partitioned). The maintenance and `falcon doctor` read them alike.
pub async fn partitions(conn: &mut sqlx::PgConnection) -> Result<Vec<Partition>, sqlx::Error> {
    sqlx::query_as(PARTITIONS).fetch_all(conn).await
}

const PARTITIONS: &str = "SELECT c.relname::text AS name,
       pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' AS is_default,
       substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \\(''([^'']+)''\\)')::timestamptz AS lower,
       substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \\(''([^'']+)''\\)')::timestamptz AS upper,
       c.reltuples AS rows_estimate
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = to_regclass('inference_logs')
 ORDER BY upper NULLS LAST, name";

/// How often a worker runs maintenance, once its first run (at start) has worked.
pub const EVERY: Duration = Duration::from_secs(3600);
/// How soon a run that failed (the database away) is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// `request_log_retention_days`: the setting, exported before the worker listens (the
/// maintenance loop runs on the writer's thread, which may start later).
pub fn export_setting(retention: Retention) {
    metrics::gauge!(crate::telemetry::metrics::REQUEST_LOG_RETENTION_DAYS).set(f64::from(retention.0.unwrap_or(0)));
}

/// The worker's maintenance loop: a run as soon as the database takes it, then every `EVERY`.
pub async fn keep(sink: Sink, retention: Retention) {
    loop {
        let next = match run(&sink, retention).await {
            Ok(()) => EVERY,
            Err(error) => {
                tracing::debug!(error, "Request-log maintenance did not run; trying again later");
                RETRY_AFTER
            }
        };
        tokio::time::sleep(next).await;
    }
}

/// One run: the schema first (the writer may not have made it yet), then `maintain`. A run
/// that found another worker at it counts as done: the log is being kept.
async fn run(sink: &Sink, retention: Retention) -> Result<(), String> {
    use metrics::gauge;

    use crate::telemetry::metrics::{REQUEST_LOG_DATABASE_BYTES, REQUEST_LOG_MAINTAINED_AT};
    sink.migrate().await.map_err(|e| e.to_string())?;
    let done = sink.maintain(retention, Utc::now(), false).await.map_err(|e| e.to_string())?;
    report(&done, sink.backend());
    if let Ok(bytes) = sink.database_bytes().await {
        gauge!(REQUEST_LOG_DATABASE_BYTES).set(bytes as f64);
    }
    if done.failed.is_empty() {
        gauge!(REQUEST_LOG_MAINTAINED_AT).set(Utc::now().timestamp() as f64);
        Ok(())
    } else {
        Err(done.failed.join("; "))
    }
}

/// Logs and counts what a run did.
fn report(done: &Maintenance, backend: &'static str) {
    use metrics::counter;

    use crate::telemetry::metrics::{REQUEST_LOG_PARTITIONS_DROPPED, REQUEST_LOG_ROWS_PRUNED};
    for name in &done.created {
        tracing::info!(partition = %name, "Created request-log partition");
    }
    for d in &done.dropped {
        counter!(REQUEST_LOG_PARTITIONS_DROPPED).increment(1);
        tracing::info!(partition = %d.name, before = %d.before, rows_estimate = d.rows_estimate, "Dropped request-log partition past retention");
    }
    if done.stray_rows > 0 {
        tracing::info!(rows = done.stray_rows, "Deleted request-log rows past retention from the default partition");
    }
    if backend == "sqlite" && done.rows > 0 {
        counter!(REQUEST_LOG_ROWS_PRUNED).increment(done.rows);
        tracing::info!(rows = done.rows, "Deleted request-log rows past retention");
    }
    for failure in &done.failed {
        tracing::warn!(error = %failure, "Request-log maintenance step failed; trying again at the next run");
    }
}

impl Sink {
    /// The database's size on disk: Postgres's whole database, or the SQLite file.
    pub async fn database_bytes(&self) -> Result<u64, sqlx::Error> {
        let bytes: i64 = match self {
            Self::Postgres(pool) => {
                sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(pool).await?
            }
            Self::Sqlite(pool, _) => {
                sqlx::query_scalar("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
                    .fetch_one(pool)
                    .await?
            }
        };
        Ok(bytes.max(0) as u64)
    }

    /// Creates the coming days' partitions and removes what is past `retention` at `now`.
    /// `dry_run` reports what it would do and changes nothing.
    pub async fn maintain(
        &self,
        retention: Retention,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<Maintenance, sqlx::Error> {
        match self {
            Self::Postgres(pool) => maintain_postgres(pool, retention, now, dry_run).await,
            Self::Sqlite(pool, _) => prune_sqlite(pool, retention.cutoff(now), dry_run).await,
        }
    }
}

async fn maintain_postgres(
    pool: &PgPool,
    retention: Retention,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Maintenance, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let locked: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)").bind(LOCK_KEY).fetch_one(&mut *tx).await?;
    if !locked {
        return Ok(Maintenance { skipped: true, ..Maintenance::default() });
    }
    let partitioned: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass('inference_logs'))",
    )
    .fetch_one(&mut *tx)
    .await?;
    if !partitioned {
        let why = "inference_logs is not partitioned by day yet: a worker of this version (or a prune without --dry-run) migrates it";
        return Ok(Maintenance { failed: vec![why.into()], ..Maintenance::default() });
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))).execute(&mut *tx).await?;
    // The table before any of its partitions, the order `LOCK TABLE inference_logs` and the
    // writer's inserts take them in: a run that read the default partition first and then
    // waited for the table could deadlock with an operator holding the table and waiting
    // for the default partition. SHARE UPDATE EXCLUSIVE is what attaching a partition
    // takes anyway; inserts and queries (ROW EXCLUSIVE, ACCESS SHARE) are not held up.
    sqlx::query("LOCK TABLE ONLY inference_logs IN SHARE UPDATE EXCLUSIVE MODE").execute(&mut *tx).await?;
    let partitions = partitions(&mut tx).await?;
    let mut done = Maintenance::default();

    let cutoff = retention.cutoff(now);
    // Days the default partition holds rows of (a replayed spool, a skewed clock) get their
    // own partition too, so that retention can drop them; rows already past it go below.
    let strays: Vec<NaiveDate> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM {DEFAULT_PARTITION} WHERE created_at >= coalesce($1, '-infinity') LIMIT {MAX_STRAY_DAYS}"
    )))
    .bind(cutoff)
    .fetch_all(&mut *tx)
    .await?;
    let today = now.date_naive();
    let mut days: Vec<NaiveDate> = (0..=DAYS_AHEAD).filter_map(|d| today.checked_add_days(Days::new(d))).collect();
    days.extend(strays);
    days.sort_unstable();
    days.dedup();
    for day in days {
        let (from, to) = (day_start(day), day_start(day.succ_opt().unwrap_or(day)));
        if partitions.iter().any(|p| p.overlaps(from, to)) {
            continue;
        }
        let name = partition_name(day);
        if !dry_run {
            let mut step = sqlx::Connection::begin(&mut *tx).await?;
            match create_partition(&mut step, &name, from, to).await {
                Ok(()) => step.commit().await?,
                Err(error) => {
                    step.rollback().await?;
                    done.failed.push(format!("create {name}: {error}"));
                    continue;
                }
            }
        }
        done.created.push(name);
    }

    if let Some(cutoff) = cutoff {
        let strays = sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {DEFAULT_PARTITION} WHERE created_at < $1")))
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        done.rows += strays;
        done.stray_rows = strays;
        for p in &partitions {
            let Some(upper) = p.upper.filter(|u| *u <= cutoff) else { continue };
            if !dry_run {
                let mut step = sqlx::Connection::begin(&mut *tx).await?;
                let dropped =
                    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE \"{}\"", p.name))).execute(&mut *step).await;
                match dropped {
                    Ok(_) => step.commit().await?,
                    Err(error) => {
                        step.rollback().await?;
                        done.failed.push(format!("drop {}: {error}", p.name));
                        continue;
                    }
                }
            }
            let rows_estimate = p.rows_estimate.max(0.0) as u64;
            done.rows += rows_estimate;
            done.dropped.push(Dropped { name: p.name.clone(), before: upper, rows_estimate });
        }
    }

    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(done)
}

/// Makes `name` the partition for `[from, to)`, taking over the rows the default partition
/// holds for that range (else attaching it would fail).
async fn create_partition(
    tx: &mut sqlx::PgConnection,
    name: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let (from, to) = (from.to_rfc3339(), to.to_rfc3339());
    let statements = [
        format!("CREATE TABLE \"{name}\" (LIKE inference_logs INCLUDING DEFAULTS)"),
        format!(
            "WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE created_at >= '{from}' AND created_at < '{to}' RETURNING *) \
             INSERT INTO \"{name}\" SELECT * FROM moved"
        ),
        format!("ALTER TABLE inference_logs ATTACH PARTITION \"{name}\" FOR VALUES FROM ('{from}') TO ('{to}')"),
    ];
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?;
    }
    Ok(())
}

/// SQLite: deletes the rows before `cutoff` in batches, then gives the pages back.
async fn prune_sqlite(
    pool: &SqlitePool,
    cutoff: Option<DateTime<Utc>>,
    dry_run: bool,
) -> Result<Maintenance, sqlx::Error> {
    let mut done = Maintenance::default();
    let Some(cutoff) = cutoff else { return Ok(done) };
    // Stored as RFC 3339 UTC text, which sorts as time does.
    let cutoff = cutoff.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    if dry_run {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM inference_logs WHERE created_at < ?1")
            .bind(&cutoff)
            .fetch_one(pool)
            .await?;
        done.rows = rows.max(0) as u64;
        return Ok(done);
    }
    loop {
        let deleted = sqlx::query(
            "DELETE FROM inference_logs WHERE rowid IN \
             (SELECT rowid FROM inference_logs WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)",
        )
        .bind(&cutoff)
        .bind(SQLITE_DELETE_BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        done.rows += deleted;
        if deleted < SQLITE_DELETE_BATCH as u64 {
            break;
        }
        tokio::time::sleep(SQLITE_PAUSE).await;
    }
    if done.rows > 0 {
        reclaim_sqlite_pages(pool).await?;
    }
    Ok(done)
}

/// Returns freed pages to the file system. A file made before incremental vacuum was on
/// (an older build) is converted once, by a full `VACUUM`.
async fn reclaim_sqlite_pages(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum").fetch_one(pool).await?;
    if mode == 2 {
        sqlx::query("PRAGMA incremental_vacuum").execute(pool).await?;
    } else {
        tracing::info!("Converting the embedded request log to incremental vacuum (one full VACUUM)");
        let mut conn = pool.acquire().await?;
        sqlx::query("PRAGMA auto_vacuum = INCREMENTAL").execute(&mut *conn).await?;
        sqlx::query("VACUUM").execute(&mut *conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().into()
    }

    #[test]
    fn retention_keeps_today_and_the_days_before_it() {
        let now = at("2026-12-06T10:30:00Z");
        assert_eq!(Retention::days(30).cutoff(now), Some(at("2026-11-06T00:00:00Z")));
        assert_eq!(Retention::days(1).cutoff(now), Some(at("2026-12-05T00:00:00Z")));
        assert_eq!(Retention::days(0).cutoff(now), None, "0 keeps rows forever");
        // Just before and after midnight.
        assert_eq!(Retention::days(30).cutoff(at("2026-12-06T23:59:59Z")), Some(at("2026-11-06T00:00:00Z")));
        assert_eq!(Retention::days(30).cutoff(at("2026-12-07T00:00:00Z")), Some(at("2026-11-07T00:00:00Z")));
    }

    #[tokio::test]
    async fn a_new_embedded_log_vacuums_incrementally_and_keeps_whole_days() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::scratch_sqlite(dir.path(), Duration::from_secs(5)).await;
        let Sink::Sqlite(pool, _) = &sink else { unreachable!("a SQLite sink") };
        let pragma = |name: &str| sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("PRAGMA {name}")));
        assert_eq!(pragma("auto_vacuum").fetch_one(pool).await.unwrap(), 2, "incremental from the start");
        let now = at("2026-12-06T10:30:00Z");
        let records: Vec<_> = (0..10)
            .map(|d| super::super::LogRecord {
                created_at: now - chrono::Duration::days(d),
                ..super::super::LogRecord::new(format!("r{d}"), "w", "v")
            })
            .collect();
        assert_eq!(sink.write(&records).await.unwrap(), 10);
        let dry = sink.maintain(Retention::days(3), now, true).await.unwrap();
        assert_eq!(dry.rows, 6, "days 4 to 9 are before 2026-12-03");
        assert_eq!(sink.maintain(Retention::days(3), now, false).await.unwrap().rows, 6);
        let left: Vec<String> = sqlx::query_scalar("SELECT request_id FROM inference_logs ORDER BY created_at DESC")
            .fetch_all(pool)
            .await
            .unwrap();
        assert_eq!(left, ["r0", "r1", "r2", "r3"]);
        assert_eq!(pragma("freelist_count").fetch_one(pool).await.unwrap(), 0);
        assert_eq!(sink.maintain(Retention::days(0), now, false).await.unwrap().rows, 0, "0 keeps everything");
        sink.close().await;
    }

    #[test]
    fn partitions_are_named_by_their_day() {
        assert_eq!(partition_name(NaiveDate::from_ymd_opt(2026, 1, 5).unwrap()), "inference_logs_p20260105");
    }

    #[test]
    fn a_range_overlaps_partitions_that_share_a_moment_with_it() {
        let p = |lower: Option<&str>, upper: Option<&str>| Partition {
            name: "p".into(),
            is_default: false,
            lower: lower.map(at),
            upper: upper.map(at),
            rows_estimate: 0.0,
        };
        let (from, to) = (at("2026-12-06T00:00:00Z"), at("2026-12-07T00:00:00Z"));
        assert!(p(None, Some("2026-12-07T00:00:00Z")).overlaps(from, to), "legacy: MINVALUE to tomorrow");
        assert!(!p(None, Some("2026-12-06T00:00:00Z")).overlaps(from, to), "ends where the day begins");
        assert!(!p(Some("2026-12-07T00:00:00Z"), None).overlaps(from, to), "begins where the day ends");
        assert!(p(Some("2026-12-06T00:00:00Z"), Some("2026-12-07T00:00:00Z")).overlaps(from, to));
        let default = Partition { is_default: true, ..p(None, None) };
        assert!(!default.overlaps(from, to), "the default partition never blocks a day's own");
    }
}
