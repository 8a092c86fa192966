//! What `falcon doctor` looks at, gathered read-only: each worker's `/healthz`, `/readyz` and
//! two `/metrics` scrapes a few seconds apart; Redis (PING, INFO, CONFIG GET, SLOWLOG LEN);
//! Postgres (`pg_stat_activity`, the request log's last minute). Nothing here writes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::Serialize;
use sqlx::Connection;

use super::prom::Scrape;

/// One worker to examine.
#[derive(Debug, Clone)]
pub struct Target {
    /// `worker-1`, or the URL when the worker's own id is not known yet.
    pub name: String,
    /// `http://host:port`, no trailing slash.
    pub url: String,
    /// Native stack only: its pid and log files.
    pub pid_file: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
}

/// Where the examined deployment lives.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub workers: Vec<Target>,
    /// The load balancer, when known (native stack).
    pub balancer: Option<String>,
    pub redis_url: Option<String>,
    pub database_url: Option<String>,
    /// The native stack's directory.
    pub stack_dir: Option<PathBuf>,
}

impl Inventory {
    /// Reads a native stack's `stack.env` (written by `scripts/stack.sh up`).
    pub fn native(stack_dir: &Path) -> Result<Self, String> {
        let env_file = stack_dir.join("stack.env");
        let text = std::fs::read_to_string(&env_file)
            .map_err(|e| format!("{}: {e} (is the native stack up? scripts/stack.sh up)", env_file.display()))?;
        let get = |key: &str| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().trim_matches('"').to_owned())
                .filter(|v| !v.is_empty())
        };
        let ports = get("STACK_WORKER_PORTS").unwrap_or_else(|| "8000 8001 8002".into());
        let workers = ports
            .split_whitespace()
            .enumerate()
            .map(|(i, port)| {
                let name = format!("worker-{}", i + 1);
                Target {
                    url: format!("http://127.0.0.1:{port}"),
                    pid_file: Some(stack_dir.join(format!("{name}.pid"))),
                    log_file: Some(stack_dir.join(format!("{name}.log"))),
                    name,
                }
            })
            .collect();
        Ok(Self {
            workers,
            balancer: get("STACK_NGINX_PORT").map(|p| format!("http://127.0.0.1:{p}")),
            redis_url: get("STACK_REDIS_URL"),
            database_url: get("STACK_DATABASE_URL"),
            stack_dir: Some(stack_dir.to_path_buf()),
        })
    }
}

impl Inventory {
    /// docker-compose.yml's published ports on this host.
    pub fn compose() -> Self {
        let env = |key: &str, default: &str| {
            std::env::var(key).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.into())
        };
        let workers = (1..=3)
            .map(|n| Target {
                name: format!("worker-{n}"),
                url: format!("http://127.0.0.1:{}", 7999 + n),
                pid_file: None,
                log_file: None,
            })
            .collect();
        let database = format!(
            "postgres://{}:{}@127.0.0.1:5432/{}",
            env("POSTGRES_USER", "falcon"),
            env("POSTGRES_PASSWORD", "falcon"),
            env("POSTGRES_DB", "falcon_inference")
        );
        Self {
            workers,
            balancer: Some("http://127.0.0.1:80".into()),
            redis_url: Some("redis://127.0.0.1:6379".into()),
            database_url: Some(database),
            stack_dir: None,
        }
    }
}

/// An HTTP answer, or why there was none.
#[derive(Debug, Clone, Serialize)]
pub struct HttpAnswer {
    pub status: Option<u16>,
    pub error: Option<String>,
    #[serde(skip)]
    pub body: String,
    pub millis: f64,
}

impl HttpAnswer {
    pub fn ok(&self) -> bool {
        self.status == Some(200)
    }
}

/// Everything seen of one worker.
#[derive(Debug, Clone)]
pub struct WorkerSeen {
    pub target: Target,
    pub health: HttpAnswer,
    pub ready: HttpAnswer,
    pub ready_body: Option<serde_json::Value>,
    pub first: Option<Scrape>,
    pub second: Option<Scrape>,
    /// Time between the two scrapes.
    pub window: Duration,
    /// Native stack: whether the pid in its pid file is alive.
    pub process_alive: Option<bool>,
    /// Native stack: the last ERROR line of its log.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisSeen {
    pub url: String,
    pub error: Option<String>,
    pub ping_ms: Option<f64>,
    pub used_memory: Option<u64>,
    pub maxmemory: Option<u64>,
    pub maxmemory_policy: Option<String>,
    pub evicted_keys: Option<u64>,
    pub slowlog_len: Option<i64>,
    pub connected_clients: Option<u64>,
    pub ops_per_sec: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LongQuery {
    pub pid: i32,
    pub seconds: f64,
    pub wait_event_type: String,
    pub query: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PostgresSeen {
    pub url: String,
    pub error: Option<String>,
    pub connect_ms: Option<f64>,
    pub connections_by_state: Vec<(String, i64)>,
    pub max_connections: Option<i64>,
    pub long_queries: Vec<LongQuery>,
    pub waiting_on_locks: Option<i64>,
    pub rows_last_minute: Option<i64>,
    pub rows_error: Option<String>,
    pub database_bytes: Option<i64>,
    /// The request log's partitions (`None`: not partitioned, or not readable).
    pub log_partitions: Option<Vec<PartitionSeen>>,
}

/// A partition of `inference_logs`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionSeen {
    pub name: String,
    /// Where its range ends (Unix time); `None` for the default partition.
    pub ends_unix: Option<f64>,
}

/// What one run of the doctor saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub workers: Vec<WorkerSeen>,
    pub balancer: Option<(String, HttpAnswer)>,
    pub redis: Option<RedisSeen>,
    pub postgres: Option<PostgresSeen>,
}

/// Looks at everything in `inventory`; the scrapes are `interval` apart and the dependency
/// probes run in between.
pub async fn gather(inventory: &Inventory, interval: Duration, timeout: Duration) -> Seen {
    let firsts = join_all(inventory.workers.iter().map(|t| first_look(t, timeout))).await;
    let started = Instant::now();
    let probes = async {
        let redis = match &inventory.redis_url {
            Some(url) => Some(probe_redis(url, timeout).await),
            None => None,
        };
        let postgres = match inventory.database_url.as_deref().filter(|u| is_postgres(u)) {
            Some(url) => Some(probe_postgres(url, timeout).await),
            None => None,
        };
        let balancer = match &inventory.balancer {
            Some(url) => Some((url.clone(), get(&format!("{url}/nginx-health"), timeout).await)),
            None => None,
        };
        (redis, postgres, balancer)
    };
    let ((redis, postgres, balancer), ()) = tokio::join!(probes, tokio::time::sleep(interval));
    let window = started.elapsed();
    let seconds = join_all(firsts.into_iter().map(|mut w| async move {
        if w.first.is_some() {
            w.second = scrape(&w.target.url, timeout).await;
        }
        w.window = window;
        w
    }))
    .await;
    Seen { workers: seconds, balancer, redis, postgres }
}

async fn first_look(target: &Target, timeout: Duration) -> WorkerSeen {
    let (health_url, ready_url) = (format!("{}/healthz", target.url), format!("{}/readyz", target.url));
    let (health, ready, first) =
        tokio::join!(get(&health_url, timeout), get(&ready_url, timeout), scrape(&target.url, timeout));
    let ready_body = serde_json::from_str(&ready.body).ok();
    let process_alive = target.pid_file.as_deref().map(pid_alive);
    let last_error = target.log_file.as_deref().and_then(last_error_line);
    WorkerSeen {
        target: target.clone(),
        health,
        ready,
        ready_body,
        first,
        second: None,
        window: Duration::ZERO,
        process_alive,
        last_error,
    }
}

async fn scrape(base: &str, timeout: Duration) -> Option<Scrape> {
    let answer = get(&format!("{base}/metrics"), timeout).await;
    answer.ok().then(|| Scrape::parse(&answer.body))
}

fn pid_alive(pid_file: &Path) -> bool {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// The last `"level":"ERROR"` line among the log's final 64 KiB, as its message and fields.
fn last_error_line(log: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(log).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let tail = String::from_utf8_lossy(&tail);
    tail.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v.get("level")?.as_str()? == "ERROR").then(|| {
            let message = v.get("message").and_then(|m| m.as_str()).unwrap_or_default();
            let error = v.get("error").and_then(|m| m.as_str()).unwrap_or_default();
            if error.is_empty() { message.to_owned() } else { format!("{message}: {error}") }
        })
    })
}

/// GET `url` (plain `http://host[:port]/path`), within `timeout`.
pub async fn get(url: &str, timeout: Duration) -> HttpAnswer {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, crate::client::get(url)).await;
    let millis = started.elapsed().as_secs_f64() * 1e3;
    match result {
        Ok(Ok((status, body))) => HttpAnswer { status: Some(status), error: None, body, millis },
        Ok(Err(e)) => HttpAnswer { status: None, error: Some(e), body: String::new(), millis },
        Err(_) => HttpAnswer {
            status: None,
            error: Some(format!("no answer within {:.1} s", timeout.as_secs_f64())),
            body: String::new(),
            millis,
        },
    }
}

pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// `scheme://user:password@host` → `scheme://user:***@host`: URLs are printed, secrets never.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..end].rfind('@') else { return url.to_owned() };
    let userinfo = &rest[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let hidden = if userinfo.contains(':') { format!("{user}:***") } else { user.to_owned() };
    format!("{scheme}://{hidden}{}", &rest[at..])
}

async fn probe_redis(url: &str, timeout: Duration) -> RedisSeen {
    let mut seen = RedisSeen { url: redact(url), ..RedisSeen::default() };
    seen.error = failure(tokio::time::timeout(timeout, redis_facts(url, &mut seen)).await, url, timeout);
    seen
}

/// Why a probe of `url` gave up, if it did: its error (without the URL's password), or
/// the timeout.
fn failure<E: std::fmt::Display>(
    outcome: Result<Result<(), E>, tokio::time::error::Elapsed>,
    url: &str,
    timeout: Duration,
) -> Option<String> {
    match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(redact_in(&e.to_string(), url)),
        Err(_) => Some(format!("no answer within {:.1} s", timeout.as_secs_f64())),
    }
}

/// Error texts may quote the URL they were given; never print its password.
fn redact_in(text: &str, url: &str) -> String {
    text.replace(url, &redact(url))
}

async fn redis_facts(url: &str, seen: &mut RedisSeen) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let started = Instant::now();
    let _: String = redis::cmd("PING").query_async(&mut con).await?;
    seen.ping_ms = Some(started.elapsed().as_secs_f64() * 1e3);
    let info: String = redis::cmd("INFO").query_async(&mut con).await?;
    let field = |name: &str| {
        info.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':'))).map(|v| v.trim().to_owned())
    };
    seen.used_memory = field("used_memory").and_then(|v| v.parse().ok());
    seen.maxmemory = field("maxmemory").and_then(|v| v.parse().ok());
    seen.maxmemory_policy = field("maxmemory_policy");
    seen.evicted_keys = field("evicted_keys").and_then(|v| v.parse().ok());
    seen.connected_clients = field("connected_clients").and_then(|v| v.parse().ok());
    seen.ops_per_sec = field("instantaneous_ops_per_sec").and_then(|v| v.parse().ok());
    // CONFIG and SLOWLOG may be renamed or denied for a read-only user: not an outage.
    if seen.maxmemory_policy.is_none()
        && let Ok(pair) =
            redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query_async::<Vec<String>>(&mut con).await
    {
        seen.maxmemory_policy = pair.get(1).cloned();
    }
    seen.slowlog_len = redis::cmd("SLOWLOG").arg("LEN").query_async::<i64>(&mut con).await.ok();
    Ok(())
}

async fn probe_postgres(url: &str, timeout: Duration) -> PostgresSeen {
    let mut seen = PostgresSeen { url: redact(url), ..PostgresSeen::default() };
    seen.error = failure(tokio::time::timeout(timeout, postgres_facts(url, &mut seen)).await, url, timeout);
    seen
}

async fn postgres_facts(url: &str, seen: &mut PostgresSeen) -> Result<(), sqlx::Error> {
    let started = Instant::now();
    let mut con = sqlx::PgConnection::connect(url).await?;
    seen.connect_ms = Some(started.elapsed().as_secs_f64() * 1e3);
    // A read-only session that never waits long: the doctor changes nothing, and a lock on
    // inference_logs (one of the things it looks for) must not hang it.
    sqlx::query("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").execute(&mut con).await?;
    sqlx::query("SET lock_timeout = '500ms'").execute(&mut con).await?;
    sqlx::query("SET statement_timeout = '2s'").execute(&mut con).await?;
    seen.connections_by_state = sqlx::query_as(
        "SELECT coalesce(state, 'background'), count(*) FROM pg_stat_activity \
         WHERE backend_type = 'client backend' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&mut con)
    .await?;
    seen.max_connections = sqlx::query_scalar("SELECT setting::bigint FROM pg_settings WHERE name = 'max_connections'")
        .fetch_optional(&mut con)
        .await?;
    let long: Vec<(i32, f64, String, String)> = sqlx::query_as(
        "SELECT pid, extract(epoch FROM now() - query_start)::float8, coalesce(wait_event_type, ''), \
                left(regexp_replace(query, '\\s+', ' ', 'g'), 120) \
         FROM pg_stat_activity \
         WHERE state <> 'idle' AND pid <> pg_backend_pid() AND query_start < now() - interval '5 seconds' \
         ORDER BY 2 DESC LIMIT 5",
    )
    .fetch_all(&mut con)
    .await?;
    seen.long_queries = long
        .into_iter()
        .map(|(pid, seconds, wait_event_type, query)| LongQuery { pid, seconds, wait_event_type, query })
        .collect();
    seen.waiting_on_locks = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        .fetch_one(&mut con)
        .await
        .ok();
    match sqlx::query_scalar("SELECT count(*) FROM inference_logs WHERE created_at > now() - interval '1 minute'")
        .fetch_one(&mut con)
        .await
    {
        Ok(n) => seen.rows_last_minute = Some(n),
        Err(e) => seen.rows_error = Some(e.to_string()),
    }
    seen.database_bytes =
        sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(&mut con).await.ok();
    // The same catalog read as the workers' maintenance.
    let partitions = falcon_app::adapters::request_log::retention::partitions(&mut con).await;
    seen.log_partitions = partitions.ok().filter(|p| !p.is_empty()).map(|p| {
        p.into_iter()
            .map(|p| PartitionSeen { ends_unix: p.upper.map(|u| u.timestamp() as f64), name: p.name })
            .collect()
    });
    let _ = con.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_printed() {
        assert_eq!(redact("redis://:s3cret@cache:6379/0"), "redis://:***@cache:6379/0");
        assert_eq!(
            redact("postgres://falcon:pw@db:5432/falcon_inference"),
            "postgres://falcon:***@db:5432/falcon_inference"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/postgres"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        let url = "redis://:pw@nowhere:1";
        assert_eq!(redact_in(&format!("cannot reach {url}"), url), "cannot reach redis://:***@nowhere:1");
    }

    #[test]
    fn native_inventory_from_stack_env() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            dir.path().join("stack.env"),
            "STACK_NGINX_PORT=9000\nSTACK_WORKER_PORTS=\"9001 9002\"\nSTACK_REDIS_URL=redis://127.0.0.1:7/0\nSTACK_DATABASE_URL=postgres://falcon@127.0.0.1:5/falcon_inference\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let inv = Inventory::native(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let urls: Vec<_> = inv.workers.iter().map(|w| (w.name.as_str(), w.url.as_str())).collect();
        assert_eq!(urls, [("worker-1", "http://127.0.0.1:9001"), ("worker-2", "http://127.0.0.1:9002")]);
        assert_eq!(inv.balancer.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(inv.redis_url.as_deref(), Some("redis://127.0.0.1:7/0"));
        assert!(Inventory::native(&dir.path().join("missing")).is_err());
    }
}
