//! The one typed configuration, read from flags, environment variables and `.env`.
//!
//! Every field's long flag is the lowercase of its environment variable, so clap's
//! messages (`invalid value 'x' for '--port <PORT>'`) name the variable.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args};

/// A value that must never be printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Parses a fraction in [0, 1].
fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) { Ok(v) } else { Err("must be a number from 0 to 1".into()) }
}

/// Parses a finite number of seconds, zero allowed.
fn non_negative_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && (0.0..=3_600.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be a number of seconds ≥ 0 and ≤ 3600".into())
    }
}

/// Parses a strictly positive, finite number of seconds.
fn positive_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err("must be a number of seconds > 0 and ≤ 86400".into())
    }
}

fn log_level(s: &str) -> Result<String, String> {
    let up = s.trim().to_ascii_uppercase();
    match up.as_str() {
        "TRACE" | "DEBUG" | "INFO" | "WARN" | "WARNING" | "ERROR" => Ok(up),
        _ => Err("must be one of TRACE, DEBUG, INFO, WARN, ERROR".into()),
    }
}

fn worker_id(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok { Ok(s.to_owned()) } else { Err("must be 1-64 characters of A-Z a-z 0-9 - _ . :".into()) }
}

/// `LOG_SPOOL_DIR`: a path, or empty for no spool.
fn spool_dir(s: &str) -> Result<String, String> {
    Ok(s.to_owned())
}

/// Worker settings.
#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// Identity of this worker in responses, logs and metrics [default: the host name].
    #[arg(long, env = "WORKER_ID", value_parser = worker_id)]
    pub worker_id: Option<String>,
    /// Address to bind.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// Port to bind (0 = any free port).
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,
    /// TRACE, DEBUG, INFO, WARN or ERROR.
    #[arg(long, env = "LOG_LEVEL", default_value = "INFO", value_parser = log_level)]
    pub log_level: String,
    /// Which model implementation serves: `tfidf` (built in), or `minilm` (a transformer;
    /// needs MINILM_DIR).
    #[arg(long, env = "MODEL_BACKEND", default_value = "tfidf")]
    pub model_backend: String,
    /// Model file to serve [default: the model built into the binary].
    #[arg(long, env = "MODEL_PATH")]
    pub model_path: Option<PathBuf>,
    /// A model repository file (TOML) naming the models to serve; unset = one model,
    /// `sentiment`, from MODEL_BACKEND / MODEL_PATH. See docs/models.md.
    #[arg(long, env = "MODEL_REPOSITORY")]
    pub model_repository: Option<PathBuf>,
    /// Whole-request deadline; past it the client gets 504 `request_timeout`.
    #[arg(long, env = "REQUEST_TIMEOUT_SECONDS", default_value = "30", value_parser = positive_seconds)]
    pub request_timeout_seconds: f64,
    /// Deadline for one model inference; past it the client gets 504 `inference_timeout`.
    #[arg(long, env = "INFERENCE_TIMEOUT_SECONDS", default_value = "5", value_parser = positive_seconds)]
    pub inference_timeout_seconds: f64,
    /// Threads that run the model [default: one per CPU core].
    #[arg(long, env = "INFERENCE_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub inference_threads: Option<u16>,
    /// Requests that may wait for an inference thread; beyond it new ones get 503 `overloaded`.
    #[arg(long, env = "INFERENCE_QUEUE_CAPACITY", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub inference_queue_capacity: u32,
    /// Most texts one model call gets: what an inference thread gathers from the queue
    /// (a batch request's texts are never split).
    #[arg(long, env = "MAX_BATCH_SIZE", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_batch_size: u32,
    /// How long an inference thread waits for more texts to fill a batch, for a model that
    /// prefers batches (minilm); 0 = run what is queued at once. The TF-IDF model never waits.
    #[arg(long, env = "MAX_BATCH_WAIT_MS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub max_batch_wait_ms: u64,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS", default_value = "30", value_parser = positive_seconds)]
    pub graceful_shutdown_timeout_seconds: f64,
    /// A candidate model file that scores a sample of live texts after each answer is sent
    /// (agreement, class mix and latency are metrics); unset = no shadow model.
    #[arg(long, env = "SHADOW_MODEL_PATH")]
    pub shadow_model_path: Option<std::path::PathBuf>,
    /// The shadow model's backend [default: the default model's]: `minilm` scores a sample
    /// with the transformer beside a TF-IDF primary (SHADOW_MODEL_PATH then names its head
    /// file or the encoder's folder).
    #[arg(long, env = "SHADOW_MODEL_BACKEND")]
    pub shadow_model_backend: Option<String>,
    /// How long a model reload (SIGHUP, POST /admin/reload) waits for its load; past it the
    /// load is abandoned and, until it ends, no other reload starts.
    #[arg(long, env = "MODEL_RELOAD_TIMEOUT_SECONDS", default_value = "60", value_parser = positive_seconds)]
    pub model_reload_timeout_seconds: f64,
    /// Fraction of requests the shadow model scores (0 to 1).
    #[arg(long, env = "SHADOW_SAMPLE_RATE", default_value = "0.1", value_parser = fraction)]
    pub shadow_sample_rate: f64,
    /// After SIGTERM/SIGINT, keep serving this long with /readyz answering 503 before the
    /// listener closes, so a load balancer that polls readiness stops sending first (0: close at once).
    #[arg(long, env = "SHUTDOWN_DRAIN_DELAY_SECONDS", default_value = "0", value_parser = non_negative_seconds)]
    pub shutdown_drain_delay_seconds: f64,
    /// Time a client has to send a whole request head; also the longest a keep-alive
    /// connection may stay idle before the worker closes it.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT_SECONDS", default_value = "10", value_parser = positive_seconds)]
    pub http_header_read_timeout_seconds: f64,
    /// Connections open at once; more are closed as soon as they arrive [default: the
    /// open-files limit less 64 for the worker's own files].
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_max_connections: Option<u32>,
    /// Largest accepted request body; larger gets 413.
    #[arg(long, env = "MAX_REQUEST_BODY_BYTES", default_value_t = 256 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=16 * 1024 * 1024))]
    pub max_request_body_bytes: u32,
    /// Bytes of request bodies being received at once, all connections together; a body
    /// that would take more gets 503 overloaded at once (stalled uploads cannot pin memory).
    #[arg(long, env = "MAX_BODY_BYTES_IN_FLIGHT", default_value_t = 64 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_body_bytes_in_flight: u32,
}

/// Response cache settings.
#[derive(Debug, Clone, Args)]
pub struct CacheConfig {
    /// Serve repeated texts from the response cache.
    #[arg(long, env = "CACHE_ENABLED", default_value_t = true, action = ArgAction::Set)]
    pub cache_enabled: bool,
    /// How long a cached prediction lives.
    #[arg(long, env = "CACHE_TTL_SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub cache_ttl_seconds: u64,
    /// Upper bound on entries in the in-process cache.
    #[arg(long, env = "CACHE_MAX_ENTRIES", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub cache_max_entries: u64,
}

/// Redis: the shared cache and idempotency store. Unset (no `REDIS_HOST`/`REDIS_URL`):
/// both stay in-process.
#[derive(Debug, Clone, Args)]
pub struct RedisConfig {
    /// Redis for the shared cache and idempotency keys; unset (and no REDIS_URL) = in-process.
    #[arg(long, env = "REDIS_HOST")]
    pub redis_host: Option<String>,
    /// Redis port (with REDIS_HOST).
    #[arg(long, env = "REDIS_PORT", default_value_t = 6379)]
    pub redis_port: u16,
    /// Redis database number (with REDIS_HOST).
    #[arg(long, env = "REDIS_DB", default_value_t = 0)]
    pub redis_db: u32,
    /// Redis password (with REDIS_HOST); never logged.
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<Secret>,
    /// Redis as one URL (redis://[:password@]host:port/db), instead of REDIS_HOST/PORT/DB/PASSWORD.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,
    /// Deadline for one Redis operation; past it the request goes on without the cache.
    #[arg(long, env = "REDIS_OPERATION_TIMEOUT_SECONDS", default_value = "0.5", value_parser = positive_seconds)]
    pub redis_operation_timeout_seconds: f64,
    /// In-process layer in front of Redis: entries live this long (0 = no layer).
    #[arg(long, env = "CACHE_L1_TTL_SECONDS", default_value_t = 5)]
    pub cache_l1_ttl_seconds: u64,
    /// Bound on the in-process layer in front of Redis.
    #[arg(long, env = "CACHE_L1_MAX_ENTRIES", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub cache_l1_max_entries: u64,
}

/// `X-Idempotency-Key` handling.
#[derive(Debug, Clone, Args)]
pub struct IdempotencyConfig {
    /// Honour X-Idempotency-Key: a repeat with the same body replays the stored answer.
    #[arg(long, env = "IDEMPOTENCY_ENABLED", default_value_t = true, action = ArgAction::Set)]
    pub idempotency_enabled: bool,
    /// How long a stored answer can be replayed for its key.
    #[arg(long, env = "IDEMPOTENCY_TTL_SECONDS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub idempotency_ttl_seconds: u64,
    /// Keys the in-process store holds (without Redis); beyond it the oldest stored records
    /// are evicted (in-progress claims never). About 1 KiB of memory each.
    #[arg(long, env = "IDEMPOTENCY_MAX_ENTRIES", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub idempotency_max_entries: u64,
}

/// Circuit breakers and retries for the dependencies.
#[derive(Debug, Clone, Args)]
pub struct ResilienceConfig {
    /// Stop calling a failing Redis or Postgres until it answers again.
    #[arg(long, env = "CIRCUIT_BREAKER_ENABLED", default_value_t = true, action = ArgAction::Set)]
    pub circuit_breaker_enabled: bool,
    /// Consecutive failures that open a breaker.
    #[arg(long, env = "CIRCUIT_BREAKER_FAILURE_THRESHOLD", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub circuit_breaker_failure_threshold: u32,
    /// How long an open breaker waits before letting a probe through (a health probe closes it sooner).
    #[arg(long, env = "CIRCUIT_BREAKER_TIMEOUT_SECONDS", default_value = "60", value_parser = positive_seconds)]
    pub circuit_breaker_timeout_seconds: f64,
    /// Probe successes that close a half-open breaker.
    #[arg(long, env = "CIRCUIT_BREAKER_HALF_OPEN_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub circuit_breaker_half_open_attempts: u32,
    /// Retry transient Redis errors with exponential backoff and jitter.
    #[arg(long, env = "RETRY_ENABLED", default_value_t = true, action = ArgAction::Set)]
    pub retry_enabled: bool,
    /// Attempts in all, the first included.
    #[arg(long, env = "RETRY_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub retry_max_attempts: u32,
    /// Backoff before the first retry; doubles each time.
    #[arg(long, env = "RETRY_BASE_DELAY_MS", default_value_t = 100)]
    pub retry_base_delay_ms: u64,
    /// Longest backoff between two attempts.
    #[arg(long, env = "RETRY_MAX_DELAY_MS", default_value_t = 2000)]
    pub retry_max_delay_ms: u64,
}

/// The request log: Postgres when configured, else an embedded SQLite file.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// Write one row per POST /infer to `inference_logs`.
    #[arg(long, env = "REQUEST_LOG_ENABLED", default_value_t = true, action = ArgAction::Set)]
    pub request_log_enabled: bool,
    /// The embedded request log, used when no Postgres is configured.
    #[arg(long, env = "REQUEST_LOG_SQLITE_PATH", default_value = "data/request_log.db")]
    pub request_log_sqlite_path: PathBuf,
    /// Days of request-log rows kept, in whole UTC days: today and the N days before it.
    /// Older day partitions (Postgres) or rows (SQLite) are removed hourly, off the request
    /// path. 0 keeps everything.
    #[arg(long, env = "REQUEST_LOG_RETENTION_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(0..=36_500))]
    pub request_log_retention_days: u32,
    /// Most rows in one batch (one COPY into Postgres, or 128-row INSERTs into SQLite).
    #[arg(long, env = "LOG_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub log_batch_size: u32,
    /// The request-log spool: every record is journaled here before its response (so a
    /// crash loses none) and waits here while the database is behind or away. Empty: off
    /// (memory only, LOG_BUFFER_SIZE, drops counted).
    #[arg(long, env = "LOG_SPOOL_DIR", default_value = "data/spool", value_parser = spool_dir)]
    pub log_spool_dir: String,
    /// Bound on the spool's files; past it records fall back to memory, then are dropped and counted.
    #[arg(long, env = "LOG_SPOOL_MAX_BYTES", default_value_t = 1 << 30,
          value_parser = clap::value_parser!(u64).range(1 << 20..))]
    pub log_spool_max_bytes: u64,
    /// Request-log batches written at once to Postgres (each on its own connection); the
    /// embedded SQLite file takes one at a time.
    #[arg(long, env = "LOG_WRITER_CONCURRENCY", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub log_writer_concurrency: u32,
    /// How the request-log writer's threads are scheduled: `idle` (Linux's idle class, the
    /// default: a request thread that wakes always takes the CPU from them at once) or a
    /// nice value, 0-19. Under saturation the spool absorbs what they cannot write.
    #[arg(long, env = "LOG_WRITER_NICE", default_value = "idle")]
    pub log_writer_nice: crate::adapters::request_log::WriterPriority,
    /// How long the writer waits to fill a batch: with less than `LOG_BATCH_SIZE` rows
    /// waiting, at most one batch a window. Unset: 50 ms with the embedded SQLite log,
    /// 200 ms with Postgres, where each batch is a round trip and a commit
    /// (`Sink::default_batch_window`, docs/performance.md).
    #[arg(long, env = "LOG_BATCH_WINDOW_MS")]
    pub log_batch_window_ms: Option<u64>,
    /// Postgres for the request log; unset (and no DATABASE_URL) = the embedded SQLite file.
    #[arg(long, env = "POSTGRES_HOST")]
    pub postgres_host: Option<String>,
    /// Postgres port (with POSTGRES_HOST).
    #[arg(long, env = "POSTGRES_PORT", default_value_t = 5432)]
    pub postgres_port: u16,
    /// Postgres database (with POSTGRES_HOST).
    #[arg(long, env = "POSTGRES_DB", default_value = "falcon_inference")]
    pub postgres_db: String,
    /// Postgres user (with POSTGRES_HOST).
    #[arg(long, env = "POSTGRES_USER", default_value = "falcon")]
    pub postgres_user: String,
    /// Postgres password (with POSTGRES_HOST); never logged.
    #[arg(long, env = "POSTGRES_PASSWORD", hide_env_values = true)]
    pub postgres_password: Option<Secret>,
    /// Connections in the request-log pool.
    #[arg(long, env = "POSTGRES_POOL_SIZE", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub postgres_pool_size: u32,
    /// Postgres as one URL (postgres://user:password@host:port/db), instead of POSTGRES_*.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,
    /// Deadline for one request-log write; past it the batch waits in the spool and is retried (SQLite: the longest a write waits for another connection's lock).
    #[arg(long, env = "POSTGRES_OPERATION_TIMEOUT_SECONDS", default_value = "5", value_parser = positive_seconds)]
    pub postgres_operation_timeout_seconds: f64,
    /// Request-log records held in memory without a spool, or when the spool refuses (oldest dropped and counted beyond); with a spool, records this far behind the writer count as spooled.
    #[arg(long, env = "LOG_BUFFER_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub log_buffer_size: u32,
}

impl DatabaseConfig {
    /// The Postgres URL, from `DATABASE_URL` or built from `POSTGRES_*`; `None` when
    /// Postgres is not configured (the request log then goes to SQLite).
    pub fn postgres_url(&self) -> Option<Secret> {
        let d = self;
        if let Some(url) = &d.database_url {
            return Some(url.clone());
        }
        let host = d.postgres_host.as_ref()?;
        let auth = match &d.postgres_password {
            Some(p) => format!("{}:{}@", percent_encode(&d.postgres_user), percent_encode(p.expose())),
            None => format!("{}@", percent_encode(&d.postgres_user)),
        };
        Some(Secret(format!("postgres://{auth}{host}:{}/{}", d.postgres_port, d.postgres_db)))
    }
}

/// Who may call the inference routes, and how much (API keys, rate limits, admission).
#[derive(Debug, Clone, Args)]
pub struct AccessConfig {
    /// A file of API keys, one `id:sha256-of-key[:scopes]` a line (it holds no secret;
    /// scopes `infer` (default) and `admin`, joined with `+`). Set: inference routes need
    /// `Authorization: Bearer <key>`; health, readiness and metrics stay open.
    #[arg(long, env = "API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// API keys in the clear, `id:key[:scopes]`, comma-separated: for development only
    /// (use API_KEYS_FILE in production); never logged.
    #[arg(long, env = "API_KEYS", hide_env_values = true)]
    pub api_keys: Option<Secret>,
    /// The deployment's key for every stored hash of a text (the row's text_hash, the
    /// idempotency fingerprint, the cache key): HMAC-SHA256, at least 16 bytes. Every worker
    /// of a deployment needs the same one. Unset or empty: read from TEXT_HASH_KEY_FILE.
    #[arg(long, env = "TEXT_HASH_KEY", hide_env_values = true)]
    pub text_hash_key: Option<Secret>,
    /// Where the text hash key is kept when TEXT_HASH_KEY is unset: created with a random
    /// key on the first start.
    #[arg(long, env = "TEXT_HASH_KEY_FILE", default_value = "data/text_hash.key")]
    pub text_hash_key_file: PathBuf,
    /// Rate-limit each client (its API key id, else its address): RATE_LIMIT_PER_MINUTE
    /// with bursts of RATE_LIMIT_BURST; beyond, 429 rate_limited with Retry-After.
    #[arg(long, env = "RATE_LIMIT_ENABLED", default_value_t = false, action = ArgAction::Set)]
    pub rate_limit_enabled: bool,
    /// Requests a client may make per minute, sustained (with RATE_LIMIT_ENABLED).
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value_t = 600,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_per_minute: u32,
    /// Requests a client may make at once after being idle (with RATE_LIMIT_ENABLED).
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: u32,
    /// Proxies whose X-Forwarded-For is believed (comma-separated CIDRs); a request from
    /// anywhere else is known by its own address. Empty (the default): no one is.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", value_parser = cidrs)]
    pub trusted_proxies: Cidrs,
    /// Requests served at once; beyond, 503 overloaded at once with Retry-After (0: no limit).
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 0)]
    pub max_concurrent_requests: u32,
    /// Most texts in one POST /infer/batch.
    #[arg(long, env = "MAX_BATCH_TEXTS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_batch_texts: u32,
}

/// A list of IP networks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cidrs(pub Vec<ipnet::IpNet>);

impl Cidrs {
    /// Whether `ip` is in one of the networks; `::ffff:a.b.c.d` counts as `a.b.c.d`.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

fn cidrs(s: &str) -> Result<Cidrs, String> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("{c:?} is not an address or CIDR (e.g. 10.0.0.0/8)"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Cidrs)
}

/// The memory-growth drill (runbook incident #6). Never on in production.
#[derive(Debug, Clone, Args)]
pub struct DebugConfig {
    /// Every /infer request keeps DEBUG_MEMORY_GROWTH_MB_PER_REQUEST MiB until exit.
    #[arg(long, env = "DEBUG_MEMORY_GROWTH", default_value_t = false, action = ArgAction::Set)]
    pub debug_memory_growth: bool,
    /// With DEBUG_MEMORY_GROWTH: MiB each POST /infer keeps until exit (at most 1024).
    #[arg(long, env = "DEBUG_MEMORY_GROWTH_MB_PER_REQUEST", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub debug_memory_growth_mb_per_request: u32,
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Per-connection limits (`HTTP_HEADER_READ_TIMEOUT_SECONDS`, `HTTP_MAX_CONNECTIONS`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time a client has to send a whole request head, and the longest a keep-alive
    /// connection may sit idle.
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// The soft limit on open files of this process (from /proc/self/limits), if known.
pub fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A setting that parses but cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct InvalidSetting {
    pub variable: &'static str,
    pub message: String,
}

/// Everything `falcon serve` needs.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,
    #[command(flatten)]
    pub cache: CacheConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub idempotency: IdempotencyConfig,
    #[command(flatten)]
    pub resilience: ResilienceConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub access: AccessConfig,
    #[command(flatten)]
    pub debug: DebugConfig,
}

impl Config {
    /// This worker's id: `WORKER_ID`, else the host name, else `falcon`.
    pub fn worker_id(&self) -> String {
        self.server.worker_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| worker_id(h).is_ok())
                .unwrap_or_else(|| "falcon".to_owned())
        })
    }

    /// Inference threads: `INFERENCE_THREADS`, else the number of CPU cores.
    pub fn inference_threads(&self) -> usize {
        self.server
            .inference_threads
            .map(usize::from)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The Redis URL, from `REDIS_URL` or built from `REDIS_HOST`/`PORT`/`DB`/`PASSWORD`;
    /// `None` when Redis is not configured.
    pub fn redis_url(&self) -> Option<Secret> {
        let r = &self.redis;
        if let Some(url) = &r.redis_url {
            return Some(url.clone());
        }
        let host = r.redis_host.as_ref()?;
        let auth = r.redis_password.as_ref().map(|p| format!(":{}@", percent_encode(p.expose()))).unwrap_or_default();
        Some(Secret(format!("redis://{auth}{host}:{}/{}", r.redis_port, r.redis_db)))
    }

    /// The Postgres URL, from `DATABASE_URL` or built from `POSTGRES_*`; `None` when
    /// Postgres is not configured (the request log then goes to SQLite).
    pub fn postgres_url(&self) -> Option<Secret> {
        self.database.postgres_url()
    }

    /// The spool directory, `None` when `LOG_SPOOL_DIR` is empty (spool off).
    pub fn log_spool_dir(&self) -> Option<&std::path::Path> {
        let dir = self.database.log_spool_dir.as_str();
        (!dir.is_empty()).then_some(std::path::Path::new(dir))
    }

    pub fn postgres_operation_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.database.postgres_operation_timeout_seconds)
    }

    /// Breaker settings (the same for every dependency).
    pub fn breaker(&self) -> crate::adapters::resilience::BreakerConfig {
        let r = &self.resilience;
        crate::adapters::resilience::BreakerConfig {
            enabled: r.circuit_breaker_enabled,
            failure_threshold: r.circuit_breaker_failure_threshold,
            open_for: Duration::from_secs_f64(r.circuit_breaker_timeout_seconds),
            half_open_successes: r.circuit_breaker_half_open_attempts,
        }
    }

    pub fn redis_operation_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.redis.redis_operation_timeout_seconds)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.server.request_timeout_seconds)
    }

    pub fn inference_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.server.inference_timeout_seconds)
    }

    /// Header-read timeout and connection cap for the listener.
    pub fn connection_limits(&self) -> ConnectionLimits {
        let max_connections = self
            .server
            .http_max_connections
            .map(|n| n as usize)
            .unwrap_or_else(|| open_files_limit().map_or(1024, |files| files.saturating_sub(64).max(16)));
        ConnectionLimits {
            header_read_timeout: Duration::from_secs_f64(self.server.http_header_read_timeout_seconds),
            max_connections,
        }
    }

    /// How long an idempotency claim lives if its owner vanishes without releasing it (the
    /// Redis lock's TTL, and the in-process claim's): the inference deadline plus a margin.
    pub fn idempotency_claim_ttl(&self) -> Duration {
        self.inference_timeout() + Duration::from_secs(5)
    }

    pub fn shutdown_drain_delay(&self) -> Duration {
        Duration::from_secs_f64(self.server.shutdown_drain_delay_seconds)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.server.graceful_shutdown_timeout_seconds)
    }

    /// Checks what parses but cannot work (a dependency URL of the wrong form or scheme),
    /// so start-up refuses it at once, naming the variable, instead of degrading forever.
    /// Messages never repeat the value: URLs carry passwords.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if let Some(url) = self.redis_url() {
            let variable = if self.redis.redis_url.is_some() { "REDIS_URL" } else { "REDIS_HOST" };
            if redis::Client::open(url.expose()).is_err() {
                return Err(InvalidSetting {
                    variable,
                    message: "not a valid Redis URL (redis://[:password@]host[:port][/db])".into(),
                });
            }
        }
        if let Some(url) = self.postgres_url() {
            let variable = if self.database.database_url.is_some() { "DATABASE_URL" } else { "POSTGRES_HOST" };
            let scheme = url.expose().split_once("://").map_or("", |(scheme, _)| scheme);
            if !matches!(scheme, "postgres" | "postgresql") {
                return Err(InvalidSetting {
                    variable,
                    message: "the request log needs a postgres:// URL (unset it for the embedded SQLite log)".into(),
                });
            }
            if <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url.expose()).is_err() {
                return Err(InvalidSetting {
                    variable,
                    message: "not a valid Postgres URL (postgres://user[:password]@host[:port]/database)".into(),
                });
            }
        }
        Ok(())
    }

    /// A configuration with every default and the given overrides, for tests and tools.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{FromArgMatches, Parser};
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        let matches = <Wrapper as clap::CommandFactory>::command().no_binary_name(true).try_get_matches_from(args)?;
        Ok(Wrapper::from_arg_matches(&matches)?.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::from_args(Vec::<String>::new()).unwrap();
        assert_eq!(c.server.port, 8000);
        assert_eq!(c.cache.cache_ttl_seconds, 3600);
        assert!(c.cache.cache_enabled);
        assert_eq!(c.idempotency.idempotency_ttl_seconds, 86_400);
        assert_eq!(c.resilience.circuit_breaker_failure_threshold, 5);
        assert!(c.redis_url().is_none());
        assert_eq!(c.database.log_buffer_size, 1000);
        assert_eq!(c.database.log_writer_nice, crate::adapters::request_log::WriterPriority::Idle);
        assert!(c.postgres_url().is_none());
        assert_eq!(c.shutdown_timeout(), Duration::from_secs(30));
        assert!(!c.access.rate_limit_enabled && c.access.api_keys_file.is_none());
    }

    #[test]
    fn the_log_writer_runs_idle_or_at_a_nice_value() {
        use crate::adapters::request_log::WriterPriority;
        for (value, priority) in [
            ("idle", WriterPriority::Idle),
            ("IDLE", WriterPriority::Idle),
            ("0", WriterPriority::Nice(0)),
            ("19", WriterPriority::Nice(19)),
        ] {
            let c = Config::from_args(["--log-writer-nice", value]).unwrap();
            assert_eq!(c.database.log_writer_nice, priority, "{value}");
            assert_eq!(priority.to_string().parse::<WriterPriority>(), Ok(priority));
        }
    }

    #[test]
    fn booleans_parse_false() {
        let c = Config::from_args(["--cache-enabled", "false"]).unwrap();
        assert!(!c.cache.cache_enabled);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (args, name) in [
            (vec!["--port", "abc"], "PORT"),
            (vec!["--cache-ttl-seconds", "0"], "CACHE_TTL_SECONDS"),
            (vec!["--inference-timeout-seconds=-1"], "INFERENCE_TIMEOUT_SECONDS"),
            (vec!["--log-level", "loud"], "LOG_LEVEL"),
            (vec!["--worker-id", "a b"], "WORKER_ID"),
            (vec!["--log-writer-nice", "20"], "LOG_WRITER_NICE"),
            (vec!["--log-writer-nice", "lowest"], "LOG_WRITER_NICE"),
        ] {
            let err = Config::from_args(args).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn redis_url_is_built_from_parts_with_an_encoded_password() {
        let c = Config::from_args([
            "--redis-host",
            "cache",
            "--redis-port",
            "6380",
            "--redis-db",
            "2",
            "--redis-password",
            "p@ss:w/rd",
        ])
        .unwrap();
        assert_eq!(c.redis_url().unwrap().expose(), "redis://:p%40ss%3Aw%2Frd@cache:6380/2");
        let c = Config::from_args(["--redis-url", "redis://other:1/0", "--redis-host", "ignored"]).unwrap();
        assert_eq!(c.redis_url().unwrap().expose(), "redis://other:1/0");
    }

    #[test]
    fn postgres_url_is_built_from_parts() {
        let c = Config::from_args(["--postgres-host", "db", "--postgres-password", "s3cr3t!"]).unwrap();
        assert_eq!(c.postgres_url().unwrap().expose(), "postgres://falcon:s3cr3t%21@db:5432/falcon_inference");
    }

    #[test]
    fn secrets_never_print() {
        let c = Config::from_args(["--redis-password", "hunter2"]).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.redis.redis_password.clone().unwrap().expose(), "hunter2");
    }

    #[test]
    fn trusted_proxies_parse_as_networks_or_addresses() {
        let c = Config::from_args(["--trusted-proxies", "10.0.0.0/8, 192.168.1.7"]).unwrap();
        assert!(c.access.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        assert!(c.access.trusted_proxies.contains("192.168.1.7".parse().unwrap()));
        assert!(!c.access.trusted_proxies.contains("192.168.1.8".parse().unwrap()));
        assert!(Config::from_args(["--trusted-proxies", "nginx"]).is_err());
        assert!(c.access.trusted_proxies.contains("::ffff:10.1.2.3".parse().unwrap()), "an IPv4-mapped address");
        let d = Config::from_args(Vec::<String>::new()).unwrap();
        assert!(!d.access.trusted_proxies.contains("127.0.0.1".parse().unwrap()), "no one by default");
        assert!(!d.access.trusted_proxies.contains("::1".parse().unwrap()));
    }

    #[test]
    fn dependency_urls_of_the_wrong_form_are_refused_naming_the_variable_and_never_the_value() {
        assert_eq!(Config::from_args(Vec::<String>::new()).unwrap().validate(), Ok(()));
        for (args, variable) in [
            (vec!["--redis-url", "localhost:6379"], "REDIS_URL"),
            (vec!["--database-url", "mysql://u:hunter2@db/x"], "DATABASE_URL"),
            (vec!["--database-url", "postgres://u:hunter2@db:notaport/x"], "DATABASE_URL"),
        ] {
            let e = Config::from_args(args).unwrap().validate().unwrap_err();
            assert_eq!(e.variable, variable);
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        let ok =
            Config::from_args(["--redis-url", "redis://:pw@cache:6379/0", "--database-url", "postgresql://u@db/x"]);
        assert_eq!(ok.unwrap().validate(), Ok(()));
    }

    #[test]
    fn the_connection_cap_defaults_below_the_open_files_limit() {
        assert!(open_files_limit().is_some_and(|n| n > 0));
        let c = Config::from_args(Vec::<String>::new()).unwrap().connection_limits();
        assert!(open_files_limit().is_some_and(|files| c.max_connections < files));
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        let c = Config::from_args(["--http-max-connections", "7"]).unwrap().connection_limits();
        assert_eq!(c.max_connections, 7);
    }

    #[test]
    fn memory_growth_drill_is_off_by_default_and_bounded() {
        let c = Config::from_args(Vec::<String>::new()).unwrap();
        assert!(!c.debug.debug_memory_growth);
        assert_eq!(c.debug.debug_memory_growth_mb_per_request, 0);
        assert!(Config::from_args(["--debug-memory-growth-mb-per-request", "1025"]).is_err());
    }
}
