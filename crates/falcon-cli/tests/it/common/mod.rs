//! Starts the real `falcon` binary on a free port and reads its JSON log lines.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod postgres;
pub mod redis;
pub mod stack;

/// `falcon` in a fresh empty directory (so no `.env` leaks in) with only `PATH` set. The
/// directory lives as long as the returned value (a temporary in one statement is enough).
pub fn falcon() -> Falcon {
    let dir = fresh_dir();
    let cmd = falcon_in(dir.path());
    Falcon { cmd, _dir: dir }
}

/// A `falcon` command and the empty directory it runs in.
pub struct Falcon {
    cmd: Command,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Falcon {
    type Target = Command;
    fn deref(&self) -> &Command {
        &self.cmd
    }
}

impl std::ops::DerefMut for Falcon {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.cmd
    }
}

/// `falcon` run in `dir`, with only `PATH` set.
pub fn falcon_in(dir: &std::path::Path) -> Command {
    isolated(Command::new(env!("CARGO_BIN_EXE_falcon")), dir)
}

/// `cmd` run in `dir` with only `PATH` of this process's environment.
fn isolated(mut cmd: Command, dir: &std::path::Path) -> Command {
    cmd.current_dir(dir).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

/// A new empty directory, removed when the returned value is dropped.
pub fn fresh_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A free TCP port on 127.0.0.1, outside the kernel's ephemeral range (32768–60999 here),
/// so no outgoing connection of this suite takes it while a test restarts a server on it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Start from a per-process offset so parallel test binaries spread over the range.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let offset = (std::process::id() % 64) as u16 * 150;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (offset + n) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Fails with the command's output unless it succeeded.
pub fn assert_ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shipped model file (the binary embeds the same bytes).
pub fn shipped_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/classifier.bin")
}

/// A running worker; killed when dropped. Every line it writes to stdout must be JSON:
/// dropping a worker that wrote another line fails the test.
pub struct Worker {
    pub child: Child,
    pub addr: SocketAddr,
    pub logs: Arc<Mutex<Vec<Value>>>,
    not_json: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl Worker {
    /// Starts `falcon serve` on 127.0.0.1 with a free port and the built-in model, plus
    /// `env`, in an empty directory of its own, and waits until it listens.
    pub fn start(env: &[(&str, &str)]) -> Worker {
        let dir = fresh_dir();
        let mut w = Self::start_in(dir.path(), env);
        w._dir = Some(dir);
        w
    }

    /// Like `start`, in `dir` (where a `.env` would be read).
    pub fn start_in(dir: &std::path::Path, env: &[(&str, &str)]) -> Worker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_falcon"));
        cmd.arg("serve");
        Self::start_with(cmd, dir, env)
    }

    /// Starts `cmd` (a `falcon serve`, perhaps behind a wrapper such as `sh -c 'ulimit …'`)
    /// in `dir` with only `PATH`, the worker defaults and `env`, and waits until it listens.
    pub fn start_with(cmd: Command, dir: &std::path::Path, env: &[(&str, &str)]) -> Worker {
        let mut cmd = isolated(cmd, dir);
        // One text hash key for every test worker, as one deployment has: workers that share
        // a Redis agree on idempotency fingerprints and cache keys. (Empty: the key file.)
        cmd.env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("WORKER_ID", "it-worker")
            .env("TEXT_HASH_KEY", TEXT_HASH_KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn falcon");
        let stdout = child.stdout.take().expect("stdout");
        let logs: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
        let not_json: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let (sink, bad) = (logs.clone(), not_json.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str(&line) {
                    Ok(v) => sink.lock().unwrap().push(v),
                    Err(_) => bad.lock().unwrap().push(line),
                }
            }
        });
        // From here on the child is owned by a Worker, so any failure below kills it.
        let mut w = Worker {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs,
            not_json,
            reader: Some(reader),
            _dir: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = w
                .logs
                .lock()
                .unwrap()
                .iter()
                .find(|l| l["message"] == "Worker listening")
                .and_then(|l| l["address"].as_str().map(str::to_owned));
            if let Some(addr) = found {
                w.addr = addr.parse().unwrap();
                return w;
            }
            if let Ok(Some(status)) = w.child.try_wait() {
                panic!("worker exited with {status} before listening: {:?}", w.logs.lock().unwrap());
            }
            assert!(Instant::now() < deadline, "worker did not start listening within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "worker did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_messages(&self) -> Vec<String> {
        self.logs.lock().unwrap().iter().filter_map(|l| l["message"].as_str().map(str::to_owned)).collect()
    }

    /// Waits until a log line satisfies `pred`, at most `within`; fails loudly otherwise.
    pub fn wait_for_log(&self, what: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.logs.lock().unwrap().iter().find(|l| pred(l)) {
                return l.clone();
            }
            assert!(Instant::now() < deadline, "no log line {what} within {within:?}: {:?}", self.log_messages());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let bad = std::mem::take(&mut *self.not_json.lock().unwrap());
        if !bad.is_empty() && !std::thread::panicking() {
            panic!("the worker wrote {} log lines that are not JSON, e.g. {:?}", bad.len(), bad[0]);
        }
    }
}

/// The text hash key of every test worker (`Worker::start_with`), as one deployment's.
pub const TEXT_HASH_KEY: &str = "the integration tests' text hash key";

/// What a test worker stores of `text` (`text_hash`).
pub fn text_hash(text: &str) -> String {
    falcon_app::text_key::TextKey::new(TEXT_HASH_KEY.as_bytes()).unwrap().hash(text)
}

/// Reads `series` (`name{label="value",…}`) from `/metrics`: the sum of every sample of that
/// name that has those labels (and perhaps more, such as `model`). `name{` alone: every sample
/// of the name. Fails if none matches.
pub async fn metric(client: &reqwest::Client, w: &Worker, series: &str) -> f64 {
    let text = client.get(w.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let (name, wanted) = series.split_once('{').unwrap_or((series, ""));
    let wanted: Vec<&str> = wanted.trim_end_matches('}').split(',').filter(|l| !l.is_empty()).collect();
    let samples: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let (sample, value) = l.rsplit_once(' ')?;
            let (n, labels) = sample.split_once('{').unwrap_or((sample, ""));
            let labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
            (n == name && wanted.iter().all(|w| labels.contains(w))).then(|| value.parse().ok()).flatten()
        })
        .collect();
    assert!(!samples.is_empty(), "{series} not in /metrics");
    samples.iter().sum()
}

/// Waits until the sample of `series` in `/metrics` reads `expected`; fails after `within`.
pub async fn wait_for_metric(client: &reqwest::Client, w: &Worker, series: &str, expected: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let value = metric(client, w, series).await;
        if value == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {value} after {within:?}, expected {expected}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// POST `body` as JSON to `url` with `headers`.
pub async fn post(c: &reqwest::Client, url: &str, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = c.post(url).json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// POST /infer with `text` (and an idempotency key); returns the status and JSON body.
pub async fn infer(c: &reqwest::Client, w: &Worker, text: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = c.post(w.url("/infer")).json(&serde_json::json!({ "text": text }));
    if let Some(k) = key {
        req = req.header("x-idempotency-key", k);
    }
    let r = req.timeout(Duration::from_secs(10)).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Waits until the SQLite request log behind `pool` holds `expected` rows (a table not
/// created yet counts as none); fails after `within`.
pub async fn wait_for_sqlite_rows(pool: &sqlx::SqlitePool, expected: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM inference_logs").fetch_one(pool).await.unwrap_or(0);
        if n == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{n} rows in SQLite after {within:?}, expected {expected}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Least-squares slope of `y` over `x`.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let cov: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    cov / var
}

/// Where tests leave what a person should read after the run (`make test` prints it; the test
/// output itself is captured).
pub fn notes_dir() -> PathBuf {
    repo().join("target/test-notes")
}

/// Leaves `text` as the note `name` for `make test` to print after the run.
pub fn leave_note(name: &str, text: &str) {
    let dir = notes_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.txt")), text).unwrap();
}
