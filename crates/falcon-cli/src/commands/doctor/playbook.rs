//! The commands that resolve a finding, spelled for the deployment in front of the operator:
//! the native stack (`scripts/stack.sh`), docker compose, systemd or Kubernetes. The same
//! names as docs/runbook.md, which a test runs.

use clap::ValueEnum;
use serde::Serialize;

/// How the examined workers are deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// `scripts/stack.sh`: nginx + 3 workers + Redis + Postgres on this machine.
    Native,
    /// `docker compose` (docker-compose.yml: falcon-worker-N, falcon-redis, falcon-postgres).
    Compose,
    /// One worker per host under systemd (deploy/systemd: falcon-inference.service).
    Systemd,
    /// deploy/k8s: namespace falcon, deployment falcon-worker.
    Kubernetes,
    /// One worker run by hand on this host (`make run`, `falcon serve`), its logs on the
    /// terminal that runs it.
    Local,
}

impl Shape {
    /// The deployment in front of the operator, when `--deployment` does not say:
    /// `--stack` names it; else a Kubernetes pod, a systemd host (the unit's env file), a
    /// native stack whose directory is here, a host with a docker daemon, and last a worker
    /// run by hand.
    pub fn detect(stack: Option<super::Stack>, stack_dir: &std::path::Path) -> Self {
        // A docker daemon to talk to (its socket, or DOCKER_HOST); a docker CLI alone is not
        // a compose deployment.
        let docker =
            || std::env::var_os("DOCKER_HOST").is_some() || std::path::Path::new("/var/run/docker.sock").exists();
        match stack {
            Some(super::Stack::Native) => Self::Native,
            Some(super::Stack::Compose) => Self::Compose,
            None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Self::Kubernetes,
            None if std::path::Path::new(SYSTEMD_ENV_FILE).is_file() => Self::Systemd,
            None if stack_dir.join("stack.env").is_file() => Self::Native,
            None if docker() => Self::Compose,
            None => Self::Local,
        }
    }
}

/// deploy/systemd's environment file.
const SYSTEMD_ENV_FILE: &str = "/etc/falcon/falcon.env";

/// The port of a worker named by its URL (`http://host:port`), 8000 if it names none.
fn port_of(worker: &str) -> &str {
    let authority = worker.trim_start_matches("http://").split('/').next().unwrap_or_default();
    match authority.rsplit_once(':') {
        Some((_, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => port,
        _ => "8000",
    }
}

/// The pid of the process listening on a worker's port.
fn pid_of(worker: &str) -> String {
    format!("$(lsof -t -iTCP:{} -sTCP:LISTEN)", port_of(worker))
}

/// What an operator does about a finding.
pub enum Action<'a> {
    WorkerErrors(&'a str),
    RestartWorker(&'a str),
    WorkerEnv(&'a str, &'a str),
    SetWorkerEnv(&'a str, &'a str),
    Metrics(&'a str, &'a str),
    RedisPing,
    RedisMemory,
    RedisSlowlog,
    RestartRedis,
    PostgresReady,
    PostgresSql(&'a str),
    RestartPostgres,
    /// `falcon log prune --dry-run` with this many days.
    PruneLog(u32),
}

/// Queries the runbook runs on Postgres.
pub const SQL_LONG_QUERIES: &str = "SELECT pid, now() - query_start AS duration, wait_event_type, left(query, 80) \
     FROM pg_stat_activity WHERE state <> 'idle' AND pid <> pg_backend_pid() ORDER BY duration DESC LIMIT 10;";
pub const SQL_CONNECTIONS: &str = "SELECT state, count(*) FROM pg_stat_activity GROUP BY state;";
pub const SQL_ROWS_LAST_MINUTE: &str =
    "SELECT count(*) FROM inference_logs WHERE created_at > now() - interval '1 minute';";

/// Spells `action` for `shape`. `stack_dir` is the native stack's directory when not the
/// default `.stack`; `redis` and `database` are the (redacted) URLs the doctor used.
pub struct Playbook {
    pub shape: Shape,
    pub stack_dir: Option<String>,
    pub redis: Option<String>,
    pub database: Option<String>,
}

impl Playbook {
    pub fn command(&self, action: &Action<'_>) -> String {
        let stack = self.stack_prefix();
        let redis = self.redis.as_deref().unwrap_or("redis://127.0.0.1:6379");
        let database = self.database.as_deref().unwrap_or("postgres://falcon@127.0.0.1:5432/falcon_inference");
        match (self.shape, action) {
            (Shape::Native, Action::WorkerErrors(w)) => {
                format!("{stack}scripts/stack.sh logs {w} | jq -c 'select(.level==\"ERROR\")' | tail -n 20")
            }
            (Shape::Compose, Action::WorkerErrors(w)) => {
                format!("docker compose logs --no-log-prefix {w} --since 10m | jq -c 'select(.level==\"ERROR\")'")
            }
            (Shape::Systemd, Action::WorkerErrors(_)) => {
                "journalctl -u falcon-inference --since -10min -o cat | jq -c 'select(.level==\"ERROR\")'".into()
            }
            (Shape::Kubernetes, Action::WorkerErrors(w)) => {
                format!("kubectl -n falcon logs {w} --since=10m | jq -c 'select(.level==\"ERROR\")'")
            }
            // A worker run by hand logs to its terminal: keep it (`make run 2>&1 | tee falcon.log`).
            (Shape::Local, Action::WorkerErrors(_)) => {
                "jq -c 'select(.level==\"ERROR\")' falcon.log | tail -n 20   # its stdout: make run 2>&1 | tee falcon.log"
                    .into()
            }
            (Shape::Native, Action::RestartWorker(w)) => format!("{stack}scripts/stack.sh restart {w}"),
            (Shape::Compose, Action::RestartWorker(w)) => format!("docker compose restart {w}"),
            (Shape::Systemd, Action::RestartWorker(_)) => "sudo systemctl restart falcon-inference".into(),
            (Shape::Kubernetes, Action::RestartWorker(w)) => format!("kubectl -n falcon delete pod {w}"),
            (Shape::Local, Action::RestartWorker(w)) => format!("kill -TERM {} && make run", pid_of(w)),
            (Shape::Native, Action::WorkerEnv(w, var)) => format!("{stack}scripts/stack.sh env {w} | grep {var}"),
            (Shape::Compose, Action::WorkerEnv(w, var)) => format!("docker exec falcon-{w} printenv | grep {var}"),
            (Shape::Systemd, Action::WorkerEnv(_, var)) => format!("sudo grep {var} /etc/falcon/falcon.env"),
            (Shape::Kubernetes, Action::WorkerEnv(w, var)) => {
                format!("kubectl -n falcon exec {w} -- printenv | grep {var}")
            }
            (Shape::Local, Action::WorkerEnv(w, var)) => {
                format!("tr '\\0' '\\n' < /proc/{}/environ | grep {var}; grep {var} .env", pid_of(w))
            }
            (Shape::Native, Action::SetWorkerEnv(w, assignment)) => {
                format!("{stack}{assignment} scripts/stack.sh restart {w}")
            }
            (Shape::Compose, Action::SetWorkerEnv(_, assignment)) => {
                format!("echo '{assignment}' >> .env && docker compose up -d worker-1 worker-2 worker-3")
            }
            (Shape::Systemd, Action::SetWorkerEnv(_, assignment)) => {
                let var = assignment.split('=').next().unwrap_or(assignment);
                format!(
                    "sudo sed -i 's/^{var}=.*/{assignment}/' /etc/falcon/falcon.env && sudo systemctl restart falcon-inference"
                )
            }
            (Shape::Kubernetes, Action::SetWorkerEnv(_, assignment)) => {
                format!("kubectl -n falcon set env deployment/falcon-worker {assignment}")
            }
            (Shape::Local, Action::SetWorkerEnv(w, assignment)) => {
                format!("echo '{assignment}' >> .env && kill -TERM {} && make run", pid_of(w))
            }
            (_, Action::Metrics(url, pattern)) => format!("curl -s {url}/metrics | grep -E '{pattern}'"),
            (Shape::Compose, Action::RedisPing) => "docker exec falcon-redis redis-cli ping".into(),
            (Shape::Native, Action::RedisPing) => format!("{stack}scripts/stack.sh redis-cli ping"),
            (_, Action::RedisPing) => format!("redis-cli -u '{redis}' ping"),
            (Shape::Compose, Action::RedisMemory) => {
                "docker exec falcon-redis redis-cli INFO | grep -E 'used_memory_human|maxmemory|evicted_keys'".into()
            }
            (Shape::Native, Action::RedisMemory) => {
                format!("{stack}scripts/stack.sh redis-cli INFO | grep -E 'used_memory_human|maxmemory|evicted_keys'")
            }
            (_, Action::RedisMemory) => {
                format!("redis-cli -u '{redis}' INFO | grep -E 'used_memory_human|maxmemory|evicted_keys'")
            }
            (Shape::Compose, Action::RedisSlowlog) => "docker exec falcon-redis redis-cli SLOWLOG GET 10".into(),
            (Shape::Native, Action::RedisSlowlog) => format!("{stack}scripts/stack.sh redis-cli SLOWLOG GET 10"),
            (_, Action::RedisSlowlog) => format!("redis-cli -u '{redis}' SLOWLOG GET 10"),
            (Shape::Native, Action::RestartRedis) => format!("{stack}scripts/stack.sh restart redis"),
            (Shape::Compose, Action::RestartRedis) => "docker compose restart redis".into(),
            (Shape::Systemd, Action::RestartRedis) => "sudo systemctl restart redis-server".into(),
            (Shape::Kubernetes, Action::RestartRedis) => {
                format!("redis-cli -u '{redis}' ping   # Redis runs outside deploy/k8s: restart it where it runs")
            }
            (Shape::Local, Action::RestartRedis) => {
                format!("redis-cli -u '{redis}' ping   # restart Redis where it runs (sudo systemctl restart redis-server)")
            }
            (Shape::Native, Action::PostgresReady) => format!("{stack}scripts/stack.sh pg_isready"),
            (Shape::Compose, Action::PostgresReady) => "docker exec falcon-postgres pg_isready -U falcon".into(),
            (_, Action::PostgresReady) => format!("pg_isready -d '{database}'"),
            (Shape::Native, Action::PostgresSql(sql)) => format!("{stack}scripts/stack.sh psql -c \"{sql}\""),
            (Shape::Compose, Action::PostgresSql(sql)) => {
                format!("docker exec falcon-postgres psql -U falcon -d falcon_inference -c \"{sql}\"")
            }
            (_, Action::PostgresSql(sql)) => format!("psql '{database}' -c \"{sql}\""),
            (Shape::Native, Action::PruneLog(days)) => {
                format!("{stack}scripts/stack.sh falcon log prune --older-than {days}d --dry-run")
            }
            (Shape::Compose, Action::PruneLog(days)) => {
                format!("docker exec falcon-worker-1 falcon log prune --older-than {days}d --dry-run")
            }
            (Shape::Systemd, Action::PruneLog(days)) => format!(
                "sudo sh -c 'set -a; . /etc/falcon/falcon.env; falcon log prune --older-than {days}d --dry-run'"
            ),
            (Shape::Kubernetes, Action::PruneLog(days)) => {
                format!("kubectl -n falcon exec deploy/falcon-worker -- falcon log prune --older-than {days}d --dry-run")
            }
            (Shape::Local, Action::PruneLog(days)) => format!("falcon log prune --older-than {days}d --dry-run"),
            (Shape::Native, Action::RestartPostgres) => format!("{stack}scripts/stack.sh restart postgres"),
            (Shape::Compose, Action::RestartPostgres) => "docker compose restart postgres".into(),
            (Shape::Systemd, Action::RestartPostgres) => "sudo systemctl restart postgresql".into(),
            (Shape::Kubernetes, Action::RestartPostgres) => {
                format!("pg_isready -d '{database}'   # Postgres runs outside deploy/k8s: restart it where it runs")
            }
            (Shape::Local, Action::RestartPostgres) => {
                format!("pg_isready -d '{database}'   # restart Postgres where it runs (sudo systemctl restart postgresql)")
            }
        }
    }

    fn stack_prefix(&self) -> String {
        match &self.stack_dir {
            Some(dir) => format!("STACK_DIR={dir} "),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(shape: Shape) -> Playbook {
        Playbook { shape, stack_dir: None, redis: None, database: None }
    }

    #[test]
    fn each_shape_has_its_own_spelling() {
        let restart = Action::RestartWorker("worker-2");
        assert_eq!(book(Shape::Native).command(&restart), "scripts/stack.sh restart worker-2");
        assert_eq!(book(Shape::Compose).command(&restart), "docker compose restart worker-2");
        assert_eq!(book(Shape::Systemd).command(&restart), "sudo systemctl restart falcon-inference");
        assert_eq!(book(Shape::Kubernetes).command(&restart), "kubectl -n falcon delete pod worker-2");
        let env = Action::WorkerEnv("worker-1", "DEBUG_MEMORY_GROWTH");
        assert_eq!(
            book(Shape::Compose).command(&env),
            "docker exec falcon-worker-1 printenv | grep DEBUG_MEMORY_GROWTH"
        );
    }

    #[test]
    fn a_worker_run_by_hand_gets_commands_for_its_own_port_and_no_docker() {
        let local = book(Shape::Local);
        let w = "http://127.0.0.1:8123";
        assert_eq!(
            local.command(&Action::RestartWorker(w)),
            "kill -TERM $(lsof -t -iTCP:8123 -sTCP:LISTEN) && make run"
        );
        let env = local.command(&Action::WorkerEnv(w, "CACHE_ENABLED"));
        assert!(env.starts_with("tr '\\0' '\\n' < /proc/$(lsof -t -iTCP:8123 -sTCP:LISTEN)/environ"), "{env}");
        assert_eq!(port_of("http://localhost"), "8000");
        for action in [
            Action::WorkerErrors(w),
            Action::RestartWorker(w),
            Action::WorkerEnv(w, "X"),
            Action::SetWorkerEnv(w, "X=1"),
            Action::RedisPing,
            Action::RestartRedis,
            Action::PostgresReady,
            Action::RestartPostgres,
            Action::PruneLog(30),
        ] {
            let command = local.command(&action);
            assert!(!command.contains("docker") && !command.contains("stack.sh"), "{command}");
        }
    }

    #[test]
    fn the_prune_is_spelled_for_each_deployment_and_changes_nothing() {
        for shape in [Shape::Native, Shape::Compose, Shape::Systemd, Shape::Kubernetes, Shape::Local] {
            let command = book(shape).command(&Action::PruneLog(7));
            assert!(command.contains("falcon log prune --older-than 7d --dry-run"), "{command}");
        }
    }

    #[test]
    fn the_deployment_is_detected_from_what_this_host_has() {
        let nothing = tempfile::tempdir().unwrap();
        let stack = tempfile::tempdir().unwrap();
        std::fs::write(stack.path().join("stack.env"), "").unwrap();
        assert_eq!(Shape::detect(Some(super::super::Stack::Compose), nothing.path()), Shape::Compose);
        assert_eq!(Shape::detect(Some(super::super::Stack::Native), nothing.path()), Shape::Native);
        // What comes before a stack and docker in the order: this host (and CI's) has neither.
        let pod_or_unit =
            std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() || std::path::Path::new(SYSTEMD_ENV_FILE).exists();
        if !pod_or_unit {
            assert_eq!(Shape::detect(None, stack.path()), Shape::Native);
            let docker =
                std::env::var_os("DOCKER_HOST").is_some() || std::path::Path::new("/var/run/docker.sock").exists();
            assert_eq!(Shape::detect(None, nothing.path()), if docker { Shape::Compose } else { Shape::Local });
        }
    }

    #[test]
    fn native_commands_name_a_stack_dir_that_is_not_the_default() {
        let pb = Playbook { stack_dir: Some("/tmp/s".into()), ..book(Shape::Native) };
        assert_eq!(pb.command(&Action::RestartRedis), "STACK_DIR=/tmp/s scripts/stack.sh restart redis");
    }
}
