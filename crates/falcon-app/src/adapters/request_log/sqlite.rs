//! The embedded request log's inserts, on the thread that writes them.
//!
//! sqlx runs SQLite on a worker thread of its own: every statement is a hand-off to that
//! thread and back, and every bound value is copied into an owned, reference-counted
//! argument first. For the request log that was most of what a row cost (issue 34: about
//! 3.8 µs a row on sqlx's thread and 1.5 µs on the writer). So the rows go in through a
//! second connection to the same file, held here and used on the caller's thread (the
//! request-log writer's, at its lower priority): one prepared single-row INSERT, stepped
//! once a row inside one `BEGIN IMMEDIATE` transaction, binding the values straight from
//! the decoded journal bytes. Everything else (migrations, retention, the health probe,
//! `falcon log`) keeps the sqlx pool.
//!
//! The connection opens at the first write. `Sink::close` closes it beside the pool's:
//! SQLite merges the WAL into the file only when the last connection to it closes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use super::{AsRow, COLUMNS, Value, WriteError};

/// `INSERT … VALUES (?, …) ON CONFLICT (log_id) DO NOTHING`: a record written twice (a
/// batch retried after a lost commit, a journal replayed after a crash) is one row.
fn insert_one() -> String {
    format!(
        "INSERT INTO inference_logs ({}) VALUES ({}) ON CONFLICT (log_id) DO NOTHING",
        COLUMNS.join(", "),
        ["?"; COLUMNS.len()].join(", ")
    )
}

#[derive(Debug)]
enum State {
    /// Not opened yet: the first write opens it.
    Unopened,
    Open(Connection),
    /// Closed for good (shutdown): writes are refused as unavailable.
    Closed,
}

/// The connection the request-log rows go in by. Clones share it.
#[derive(Clone, Debug)]
pub struct SqliteRows {
    path: PathBuf,
    /// How long a write waits for a lock another connection holds (retention's delete,
    /// an operator's query) before it gives up as unavailable.
    busy_timeout: Duration,
    state: Arc<Mutex<State>>,
}

impl SqliteRows {
    pub fn new(path: &Path, busy_timeout: Duration) -> Self {
        Self { path: path.to_owned(), busy_timeout, state: Arc::new(Mutex::new(State::Unopened)) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic mid-write unwinds through the transaction, which rolls back as it drops.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        // The file and its schema exist: the sqlx pool made them (WAL mode and incremental
        // vacuum are kept in the file). What is per connection is set here as the pool sets it.
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.busy_timeout)?;
        // WAL + NORMAL: durable across a process crash; see `Sink::sqlite`.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -512)?;
        conn.set_prepared_statement_cache_capacity(4);
        Ok(conn)
    }

    /// Writes `batch` in one transaction; returns the rows inserted (a record already
    /// there is skipped). Blocks the calling thread for the write.
    pub fn write<R: AsRow>(&self, batch: &[R]) -> Result<u64, WriteError> {
        let mut state = self.lock();
        if matches!(*state, State::Unopened) {
            *state = State::Open(self.open().map_err(|e| classify(&e))?);
        }
        let State::Open(conn) = &mut *state else {
            return Err(WriteError::Unavailable { error: "the request log is closed".into(), table_missing: false });
        };
        let written = insert(conn, batch);
        if let Err(WriteError::Unavailable { .. }) = &written {
            // Not reused after an I/O error, a lock timeout or a missing table: the next
            // write opens afresh (and sees the schema the writer migrates meanwhile).
            *state = State::Unopened;
        }
        written
    }

    /// Closes the connection; later writes are refused. (While it is open, the WAL
    /// outlives the pool's close.)
    pub fn close(&self) {
        let old = std::mem::replace(&mut *self.lock(), State::Closed);
        if let State::Open(conn) = old
            && let Err((_, error)) = conn.close()
        {
            tracing::warn!(error = %error, "Closing the request-log SQLite connection failed");
        }
    }
}

fn insert<R: AsRow>(conn: &mut Connection, batch: &[R]) -> Result<u64, WriteError> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(insert_one);
    let classify = |e: rusqlite::Error| classify(&e);
    // IMMEDIATE: the write lock is taken (or waited for) at the start, never half way.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(classify)?;
    let mut inserted = 0u64;
    {
        let mut stmt = tx.prepare_cached(sql).map_err(classify)?;
        for record in batch {
            let row = record.as_row().map_err(WriteError::undecodable)?;
            for (i, value) in row.values().into_iter().enumerate() {
                let at = i + 1;
                match value {
                    Value::Text(v) | Value::Json(v) => stmt.raw_bind_parameter(at, v),
                    Value::Int(v) => stmt.raw_bind_parameter(at, v),
                    Value::Float(v) => stmt.raw_bind_parameter(at, v),
                    Value::Bool(v) => stmt.raw_bind_parameter(at, v),
                    Value::Time(v) => {
                        stmt.raw_bind_parameter(at, v.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                    }
                }
                .map_err(classify)?;
            }
            inserted += stmt.raw_execute().map_err(classify)? as u64;
        }
    }
    // Dropped without a commit (an error above), the transaction rolls back.
    tx.commit().map_err(classify)?;
    Ok(inserted)
}

/// Sorts a SQLite error as `Sink`'s sqlx errors are: only errors the rows cause are
/// `Rejected` (too big, a constraint, a type mismatch, a value out of range).
fn classify(error: &rusqlite::Error) -> WriteError {
    let text = error.to_string();
    let rows_at_fault = matches!(
        error.sqlite_error_code(),
        Some(
            ErrorCode::TooBig
                | ErrorCode::ConstraintViolation
                | ErrorCode::TypeMismatch
                | ErrorCode::ParameterOutOfRange
        )
    ) || matches!(error, rusqlite::Error::ToSqlConversionFailure(_));
    if rows_at_fault {
        WriteError::Rejected(text)
    } else {
        let table_missing = text.contains("no such table");
        WriteError::Unavailable { error: text, table_missing }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{LogRecord, Sink, WriteError};

    async fn sink(dir: &std::path::Path, busy_timeout: Duration) -> (Sink, sqlx::SqlitePool) {
        let sink = Sink::scratch_sqlite(dir, busy_timeout).await;
        let Sink::Sqlite(pool, _) = &sink else { unreachable!("a SQLite sink") };
        let pool = pool.clone();
        (sink, pool)
    }

    fn records(ids: &[&str]) -> Vec<LogRecord> {
        ids.iter()
            .map(|id| LogRecord {
                log_id: format!("log-{id}"),
                confidence: Some(0.5),
                probabilities: Some(r#"{"positive":0.5}"#.into()),
                cache_hit: true,
                error_message: Some("tab\tnul\0end".into()),
                created_at: chrono::DateTime::parse_from_rfc3339("2026-12-07T09:00:00.25Z").unwrap().into(),
                ..LogRecord::new(format!("req-{id}"), "w1", "v1")
            })
            .collect()
    }

    async fn count(pool: &sqlx::SqlitePool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM inference_logs").fetch_one(pool).await.unwrap()
    }

    #[tokio::test]
    async fn rows_go_in_once_as_the_pool_reads_them_and_close_merges_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, pool) = sink(dir.path(), Duration::from_secs(5)).await;
        assert_eq!(sink.write(&records(&["a", "b", "c"])).await.unwrap(), 3);
        assert_eq!(sink.write(&records(&["c", "d"])).await.unwrap(), 1, "a record written twice is one row");
        assert_eq!(count(&pool).await, 4);
        let (request_id, cache_hit, confidence, error, created): (String, bool, f64, String, String) = sqlx::query_as(
            "SELECT request_id, cache_hit, confidence, error_message, created_at FROM inference_logs WHERE log_id = 'log-d'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            (request_id.as_str(), cache_hit, confidence, error.as_str(), created.as_str()),
            ("req-d", true, 0.5, "tab\tnul\0end", "2026-12-07T09:00:00.250000Z")
        );
        assert!(dir.path().join("log.db-wal").exists(), "two connections in WAL mode");
        sink.close().await;
        assert!(!dir.path().join("log.db-wal").exists(), "both connections closed: the WAL is merged");
        let closed = sink.write(&records(&["e"])).await;
        assert!(matches!(closed, Err(WriteError::Unavailable { table_missing: false, .. })), "{closed:?}");
    }

    #[tokio::test]
    async fn a_row_at_fault_is_rejected_with_its_batch_and_a_missing_table_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, pool) = sink(dir.path(), Duration::from_secs(5)).await;
        sqlx::query(
            "CREATE TRIGGER poison BEFORE INSERT ON inference_logs WHEN NEW.request_id = 'req-bad' \
             BEGIN SELECT RAISE(ABORT, 'poisoned row'); END",
        )
        .execute(&pool)
        .await
        .unwrap();
        let rejected = sink.write(&records(&["a", "bad", "c"])).await;
        assert!(matches!(&rejected, Err(WriteError::Rejected(e)) if e.contains("poisoned row")), "{rejected:?}");
        assert_eq!(count(&pool).await, 0, "the batch is one transaction");
        assert_eq!(sink.write(&records(&["a", "c"])).await.unwrap(), 2, "the connection is usable after");

        sqlx::query("DROP TABLE inference_logs").execute(&pool).await.unwrap();
        let missing = sink.write(&records(&["e"])).await;
        assert!(matches!(missing, Err(WriteError::Unavailable { table_missing: true, .. })), "{missing:?}");
        sqlx::query("DELETE FROM _sqlx_migrations").execute(&pool).await.unwrap();
        sink.migrate().await.unwrap();
        assert_eq!(sink.write(&records(&["e"])).await.unwrap(), 1, "written once the schema is back");
        sink.close().await;
    }

    #[tokio::test]
    async fn a_lock_held_past_the_busy_timeout_is_unavailable_then_the_rows_go_in() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, pool) = sink(dir.path(), Duration::from_millis(100)).await;
        let mut holder = pool.acquire().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *holder).await.unwrap();
        let busy = sink.write(&records(&["a"])).await;
        assert!(
            matches!(&busy, Err(WriteError::Unavailable { table_missing: false, error }) if error.contains("locked")),
            "{busy:?}"
        );
        sqlx::query("ROLLBACK").execute(&mut *holder).await.unwrap();
        drop(holder);
        assert_eq!(sink.write(&records(&["a"])).await.unwrap(), 1);
        sink.close().await;
    }
}
