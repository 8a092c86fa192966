//! Where request-log rows go: Postgres, or the embedded SQLite file.
//!
//! Postgres: one `COPY … FROM STDIN` per batch, the cheapest way in for both the worker
//! (one text buffer, no per-column arrays) and the server (no executor per row, no
//! speculative insertion). A batch is atomic, so if one of its records is already in the
//! table (a batch retried after a lost acknowledgement, a spool replayed after a crash),
//! the COPY fails as a whole on the unique `log_id` and the batch goes again, copied into a
//! scratch table and moved with `INSERT … SELECT … ON CONFLICT (log_id) DO NOTHING`: a
//! record written twice is one row, and nothing is lost. Requests that share a client's
//! `request_id` are different records and each keeps its row. SQLite: one transaction of prepared single-row inserts,
//! `ON CONFLICT DO NOTHING`, on the writer's own thread (`SqliteRows`). Every statement
//! derives its columns from `COLUMNS`.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use super::sqlite::SqliteRows;
use super::{AsRow, COLUMNS, DecodeError, Value};

/// `COPY inference_logs (…) FROM STDIN` into `table`.
fn copy_into(table: &str) -> String {
    format!("COPY {table} ({}) FROM STDIN", COLUMNS.join(", "))
}

/// The fallback when a batch holds a request id that is already stored: the batch is
/// copied into a scratch table, then moved over skipping the ids already there.
const STAGE: &str = "inference_logs_incoming";

fn stage_table() -> String {
    format!(
        "CREATE TEMP TABLE {STAGE} ON COMMIT DROP AS SELECT {} FROM inference_logs WITH NO DATA",
        COLUMNS.join(", ")
    )
}

/// The table is partitioned by day, so its unique index is (log_id, created_at): a record
/// written twice has both the same.
fn insert_from_stage() -> String {
    let cols = COLUMNS.join(", ");
    format!(
        "INSERT INTO inference_logs ({cols}) SELECT {cols} FROM {STAGE} ON CONFLICT (log_id, created_at) DO NOTHING"
    )
}

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The database is away, overloaded, or not ready (the table missing): try again later.
    #[error("{error}")]
    Unavailable { error: String, table_missing: bool },
    /// The database refused the rows themselves (a constraint, a bad value): retrying
    /// them as they are will not help.
    #[error("{0}")]
    Rejected(String),
}

impl WriteError {
    /// A record that does not decode: the database never saw it, and retrying will not help.
    pub(super) fn undecodable(error: DecodeError) -> Self {
        Self::Rejected(error.to_string())
    }

    /// Sorts a Postgres error: only errors the rows cause are `Rejected`.
    fn classify(error: &sqlx::Error) -> Self {
        let text = error.to_string();
        let Some(db) = error.as_database_error() else {
            return Self::Unavailable { error: text, table_missing: false };
        };
        let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
        // 22: data exception, 23: integrity constraint, P0: raised by a trigger. (SQLite's
        // rows go in by `SqliteRows`, which sorts its own errors.)
        let rows_at_fault = code.starts_with("22") || code.starts_with("23") || code.starts_with("P0");
        if rows_at_fault {
            Self::Rejected(text)
        } else {
            let table_missing = code == "42P01" || text.contains("no such table");
            Self::Unavailable { error: text, table_missing }
        }
    }
}

/// A batch in COPY's text format: tab-separated, one row a line, `\N` for NULL; an error
/// when a record does not decode.
pub fn copy_text<R: AsRow>(batch: &[R]) -> Result<String, DecodeError> {
    use std::fmt::Write;
    fn text(out: &mut String, v: &str) {
        for ch in v.chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                // Postgres text cannot hold NUL (the INSERT path would reject it too).
                '\0' => {}
                c => out.push(c),
            }
        }
    }
    fn float(out: &mut String, v: f64) {
        if v.is_nan() {
            out.push_str("NaN");
        } else if v.is_infinite() {
            out.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
        } else {
            let _ = write!(out, "{v}");
        }
    }
    const NULL: &str = "\\N";
    let mut out = String::with_capacity(batch.len() * 320);
    for r in batch {
        for (i, value) in r.as_row()?.values().into_iter().enumerate() {
            if i > 0 {
                out.push('\t');
            }
            match value {
                Value::Text(Some(v)) => text(&mut out, v),
                Value::Int(Some(v)) => {
                    let _ = write!(out, "{v}");
                }
                Value::Float(Some(v)) => float(&mut out, v),
                Value::Bool(v) => out.push(if v { 't' } else { 'f' }),
                Value::Json(Some(v)) => text(&mut out, v),
                Value::Time(v) => out.push_str(&v.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                Value::Text(None) | Value::Int(None) | Value::Float(None) | Value::Json(None) => out.push_str(NULL),
            }
        }
        out.push('\n');
    }
    Ok(out)
}

/// A database for request-log rows.
#[derive(Clone, Debug)]
pub enum Sink {
    Postgres(PgPool),
    /// The pool (schema, retention, probe) and the connection the rows go in by.
    Sqlite(SqlitePool, SqliteRows),
}

impl Sink {
    /// Postgres, connecting lazily: no connection until the first write, so a worker starts
    /// while Postgres is down.
    pub fn postgres(url: &str, pool_size: u32, timeout: Duration) -> Result<Self, sqlx::Error> {
        // A refused connection is retried until the acquire timeout; keep that short so an
        // outage is noticed (and the breaker opens) in seconds, not minutes.
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(timeout.min(Duration::from_secs(1)))
            .connect_lazy(url)?;
        Ok(Self::Postgres(pool))
    }

    /// The embedded default: a SQLite file, created with its folder when missing. The pool
    /// runs SQLite on a thread of sqlx's at the writer's priority; rows go in on the thread
    /// that writes them, waiting up to `busy_timeout` for another connection's lock.
    pub async fn sqlite(
        path: &Path,
        priority: super::WriterPriority,
        busy_timeout: Duration,
    ) -> Result<Self, sqlx::Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL: durable across a process crash; only an OS crash can lose
            // the last commits. A full fsync per batch cost a third of /infer throughput.
            .synchronous(SqliteSynchronous::Normal)
            // A page cache of 512 KiB, not SQLite's 2 MiB: the writer appends at the right
            // edge of the table and its two indexes, and retention reads through the OS's
            // cache. Resident memory after 5 s of load with the cache off: about 1 MB less.
            .pragma("cache_size", "-512")
            // Pages freed by retention go back to the file system (`retention`); takes
            // effect on a new file, and an older one is converted at its first prune.
            .auto_vacuum(SqliteAutoVacuum::Incremental);
        // The connection lives for the process (no idle or lifetime limit), and it is opened
        // from a thread at the writer's lower priority: sqlx runs SQLite on a thread of its
        // own, which inherits that priority, so the inserts yield to request threads.
        let pool_options = SqlitePoolOptions::new().max_connections(1).idle_timeout(None).max_lifetime(None);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let opener = std::thread::Builder::new().name("request-log-open".into()).spawn(move || {
            super::lower_priority(priority);
            let opened = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(sqlx::Error::Io)
                .and_then(|rt| rt.block_on(pool_options.connect_with(options)));
            let _ = tx.send(opened);
        });
        opener.map_err(sqlx::Error::Io)?;
        let pool = rx.await.map_err(|_| sqlx::Error::PoolClosed)??;
        Ok(Self::Sqlite(pool, SqliteRows::new(path, busy_timeout)))
    }

    /// The unit tests' embedded log: `log.db` in `dir`, migrated, its threads in the
    /// ordinary scheduling class.
    #[cfg(test)]
    pub(super) async fn scratch_sqlite(dir: &Path, busy_timeout: Duration) -> Self {
        let sink = Self::sqlite(&dir.join("log.db"), super::WriterPriority::Nice(0), busy_timeout).await.unwrap();
        sink.migrate().await.unwrap();
        sink
    }

    /// How long a part batch waits to fill when `LOG_BATCH_WINDOW_MS` is not set. SQLite
    /// 50 ms: a batch costs its rows and one in-process commit, and a shorter window makes
    /// the writer's bursts shorter (at 8,000 req/s a 200 ms window is 1,600 rows written
    /// in one go of 7-9 ms, and p99 there was 15-25 % higher in four runs; CPU a request
    /// and saturation level). Postgres 200 ms: each batch is a round trip and a commit.
    pub fn default_batch_window(&self) -> Duration {
        match self {
            Self::Postgres(_) => Duration::from_millis(200),
            Self::Sqlite(..) => Duration::from_millis(50),
        }
    }

    /// Batches worth writing at once: Postgres as many as asked (each on its own
    /// connection), SQLite one. Its one connection takes one batch at a time, and a second
    /// batch taken while the first is written is small (whatever came meanwhile), so the
    /// rows cost more commits: one at a time, same text served 9 % more requests at
    /// saturation (issue 34).
    pub fn concurrency(&self, asked: usize) -> usize {
        match self {
            Self::Postgres(_) => asked.max(1),
            Self::Sqlite(..) => 1,
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(..) => "sqlite",
        }
    }

    /// Creates or updates the schema (idempotent; safe with many workers).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match self {
            Self::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await,
            Self::Sqlite(pool, _) => sqlx::migrate!("migrations/sqlite").run(pool).await,
        }
    }

    /// Writes a batch atomically; returns the rows actually inserted (a record already
    /// there is skipped). SQLite's write runs on the calling thread and blocks it.
    pub async fn write<R: AsRow + Sync>(&self, batch: &[R]) -> Result<u64, WriteError> {
        if batch.is_empty() {
            return Ok(0);
        }
        match self {
            Self::Postgres(pool) => {
                let data = copy_text(batch).map_err(WriteError::undecodable)?;
                let written = match Self::copy(pool, &data).await {
                    Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                        Self::insert_skipping_duplicates(pool, &data).await
                    }
                    done => done,
                };
                written.map_err(|e| WriteError::classify(&e))
            }
            Self::Sqlite(_, rows) => rows.write(batch),
        }
    }

    /// The fast path: the batch as one COPY. Any error leaves nothing written.
    async fn copy(pool: &PgPool, data: &str) -> Result<u64, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let copied = async {
            let mut copy = conn.copy_in_raw(&copy_into("inference_logs")).await?;
            copy.send(data.as_bytes()).await?;
            copy.finish().await
        }
        .await;
        if copied.is_err() {
            // The connection may be mid-COPY; never hand it to the next batch.
            conn.close_on_drop();
        }
        copied
    }

    /// The batch through a scratch table, skipping request ids already in the table.
    async fn insert_skipping_duplicates(pool: &PgPool, data: &str) -> Result<u64, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(stage_table())).execute(&mut *tx).await?;
        let mut copy = (*tx).copy_in_raw(&copy_into(STAGE)).await?;
        copy.send(data.as_bytes()).await?;
        copy.finish().await?;
        let inserted = sqlx::query(sqlx::AssertSqlSafe(insert_from_stage())).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(inserted)
    }

    /// A cheap round trip, for the health probe.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
            Self::Sqlite(pool, _) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
        }
    }

    /// Closes the pool, waiting for its connections, and SQLite's rows connection (SQLite
    /// merges its WAL when the last connection to the file closes).
    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(pool, rows) => {
                rows.close();
                pool.close().await;
            }
        }
    }

    /// `(size, idle)` of the connection pool.
    pub fn pool_stats(&self) -> (u32, usize) {
        match self {
            Self::Postgres(p) => (p.size(), p.num_idle()),
            Self::Sqlite(p, _) => (p.size(), p.num_idle()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::request_log::LogRecord;

    fn record() -> LogRecord {
        LogRecord {
            log_id: "log-1".into(),
            text_length: Some(12),
            prediction: Some("positive".into()),
            confidence: Some(0.25),
            probabilities: Some(r#"{"positive":0.25}"#.into()),
            cache_hit: true,
            success: true,
            processing_time_ms: f64::INFINITY,
            error_message: Some("line\nback\\slash\r\0".into()),
            client_ip: Some("10.0.0.1".into()),
            created_at: chrono::DateTime::parse_from_rfc3339("2026-11-28T12:00:00.5Z").unwrap().into(),
            ..LogRecord::new("req-1", "w\t1", "v1")
        }
    }

    #[tokio::test]
    async fn an_unset_batch_window_is_50_ms_for_sqlite_and_200_ms_for_postgres() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Sink::scratch_sqlite(dir.path(), Duration::from_secs(1)).await;
        assert_eq!(sqlite.default_batch_window(), Duration::from_millis(50));
        let postgres = Sink::postgres("postgres://falcon@127.0.0.1:1/falcon", 1, Duration::from_secs(1)).unwrap();
        assert_eq!(postgres.default_batch_window(), Duration::from_millis(200));
        sqlite.close().await;
    }

    #[test]
    fn copy_text_escapes_and_marks_nulls() {
        let text = copy_text(&[record(), record()]).unwrap();
        let line = "log-1\treq-1\tw\\t1\t\\N\t12\tpositive\t0.25\t{\"positive\":0.25}\tt\tf\tt\tInfinity\t\\N\t\\N\t\
                    line\\nback\\\\slash\\r\t\\N\t10.0.0.1\tv1\t2026-11-28T12:00:00.500000Z\t\\N\t\\N\n";
        assert_eq!(text, format!("{line}{line}"));
        assert_eq!(text.lines().count(), 2, "escaped newlines never split a row");
        assert!(text.lines().all(|l| l.split('\t').count() == COLUMNS.len()));
    }
}
