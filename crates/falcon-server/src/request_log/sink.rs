//! Where request-log rows go: Postgres, or the embedded SQLite file. One statement per
//! batch (a multi-row `INSERT … VALUES`), `ON CONFLICT (request_id) DO NOTHING` so a
//! retried batch never duplicates a row.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::types::Json;
use sqlx::{PgPool, QueryBuilder, SqlitePool};

use super::LogRecord;

const INSERT: &str = "INSERT INTO inference_logs (request_id, worker_id, text_hash, text_length, prediction, \
     confidence, probabilities, cache_hit, idempotency_hit, success, processing_time_ms, inference_time_ms, \
     error_type, error_message, idempotency_key, client_ip, model_version, created_at) ";

/// A database for request-log rows.
#[derive(Clone, Debug)]
pub enum Sink {
    Postgres(PgPool),
    Sqlite(SqlitePool),
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

    /// The embedded default: a SQLite file, created with its folder when missing.
    pub async fn sqlite(path: &Path) -> Result<Self, sqlx::Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await?;
        Ok(Self::Sqlite(pool))
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// Creates or updates the schema (idempotent; safe with many workers).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match self {
            Self::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await,
            Self::Sqlite(pool) => sqlx::migrate!("migrations/sqlite").run(pool).await,
        }
    }

    /// Inserts a batch in one statement; returns the rows actually inserted.
    pub async fn write(&self, batch: &[LogRecord]) -> Result<u64, sqlx::Error> {
        if batch.is_empty() {
            return Ok(0);
        }
        match self {
            Self::Postgres(pool) => {
                let mut q = QueryBuilder::<sqlx::Postgres>::new(INSERT);
                q.push_values(batch, |mut row, r| {
                    row.push_bind(&r.request_id)
                        .push_bind(&r.worker_id)
                        .push_bind(&r.text_hash)
                        .push_bind(r.text_length)
                        .push_bind(&r.prediction)
                        .push_bind(r.confidence)
                        .push_bind(r.probabilities.as_ref().map(Json))
                        .push_bind(r.cache_hit)
                        .push_bind(r.idempotency_hit)
                        .push_bind(r.success)
                        .push_bind(r.processing_time_ms)
                        .push_bind(r.inference_time_ms)
                        .push_bind(&r.error_type)
                        .push_bind(&r.error_message)
                        .push_bind(&r.idempotency_key)
                        .push_bind(&r.client_ip)
                        .push_bind(&r.model_version)
                        .push_bind(r.created_at);
                });
                q.push(" ON CONFLICT (request_id) DO NOTHING");
                Ok(q.build().execute(pool).await?.rows_affected())
            }
            Self::Sqlite(pool) => {
                let mut q = QueryBuilder::<sqlx::Sqlite>::new(INSERT);
                q.push_values(batch, |mut row, r| {
                    row.push_bind(&r.request_id)
                        .push_bind(&r.worker_id)
                        .push_bind(&r.text_hash)
                        .push_bind(r.text_length)
                        .push_bind(&r.prediction)
                        .push_bind(r.confidence)
                        .push_bind(r.probabilities.as_ref().map(Json))
                        .push_bind(r.cache_hit)
                        .push_bind(r.idempotency_hit)
                        .push_bind(r.success)
                        .push_bind(r.processing_time_ms)
                        .push_bind(r.inference_time_ms)
                        .push_bind(&r.error_type)
                        .push_bind(&r.error_message)
                        .push_bind(&r.idempotency_key)
                        .push_bind(&r.client_ip)
                        .push_bind(&r.model_version)
                        .push_bind(r.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
                });
                q.push(" ON CONFLICT (request_id) DO NOTHING");
                Ok(q.build().execute(pool).await?.rows_affected())
            }
        }
    }

    /// A cheap round trip, for the health probe.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
            Self::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
        }
    }

    /// `(size, idle)` of the connection pool.
    pub fn pool_stats(&self) -> (u32, usize) {
        match self {
            Self::Postgres(p) => (p.size(), p.num_idle()),
            Self::Sqlite(p) => (p.size(), p.num_idle()),
        }
    }
}
