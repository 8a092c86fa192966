//! The native stack (scripts/stack.sh) in a temp dir on free ports, for the tests that
//! need nginx, three workers, Redis and Postgres: drills, the doctor, the runbook.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::process::Command;
use std::time::{Duration, Instant};

use super::repo;

fn free_port() -> u16 {
    crate::common::free_port()
}

/// Where a native stack lives and listens: enough to drive scripts/stack.sh, and cheap to
/// hand to a drill thread.
#[derive(Clone)]
pub struct StackCtl {
    pub dir: std::path::PathBuf,
    pub nginx_port: u16,
    pub worker_ports: [u16; 3],
    /// Worker settings passed through stack.sh (e.g. MODEL_PATH).
    pub env: Vec<(String, String)>,
}

impl StackCtl {
    /// Runs scripts/stack.sh with this stack's settings; (success, stdout + stderr).
    pub fn script(&self, args: &[&str]) -> (bool, String) {
        let ports = self.worker_ports.map(|p| p.to_string()).join(" ");
        // Only what stack.sh needs: the caller's settings must not reach the workers.
        let out = Command::new(repo().join("scripts/stack.sh"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
            .env("STACK_DIR", &self.dir)
            // Everything the stack starts names the suite's temp dir: check-leftovers.sh sees it.
            .env("TMPDIR", std::env::temp_dir())
            .env("STACK_NGINX_PORT", self.nginx_port.to_string())
            .env("STACK_STATUS_PORT", free_port().to_string())
            .env("STACK_WORKER_PORTS", ports)
            .env("FALCON_BIN", env!("CARGO_BIN_EXE_falcon"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Like `script`, failing the test if stack.sh fails.
    pub fn run(&self, args: &[&str]) {
        let (ok, text) = self.script(args);
        assert!(ok, "stack.sh {args:?} failed:\n{text}");
    }
}

/// A native stack in a temp dir on free ports; `down` when dropped.
pub struct Stack {
    _dir: tempfile::TempDir,
    pub ctl: StackCtl,
}

impl Stack {
    pub fn up() -> Self {
        Self::up_with(&[])
    }

    /// A stack whose workers also get `env`.
    pub fn up_with(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ctl = StackCtl {
            dir: dir.path().to_owned(),
            nginx_port: free_port(),
            worker_ports: [free_port(), free_port(), free_port()],
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        };
        // The guard exists before `up` runs: a failed `up` is torn down too.
        let stack = Self { _dir: dir, ctl };
        stack.ctl.run(&["up"]);
        stack
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ctl.nginx_port)
    }

    pub fn database_url(&self) -> String {
        let env = std::fs::read_to_string(self.ctl.dir.join("stack.env")).unwrap();
        env.lines().find_map(|l| l.strip_prefix("STACK_DATABASE_URL=")).unwrap().to_owned()
    }

    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql").args([&self.database_url(), "-tA", "-c", sql]).output().unwrap();
        assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn rows(&self) -> i64 {
        if self.psql("SELECT to_regclass('inference_logs') IS NOT NULL") != "t" {
            return 0;
        }
        self.psql("SELECT count(*) FROM inference_logs").parse().unwrap()
    }

    /// Waits until the row count holds still for 2 s (every live worker has flushed), at
    /// most 60 s; fails loudly if it never does.
    pub fn settled_rows(&self) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = self.rows();
        let mut still_since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let n = self.rows();
            if n != last {
                (last, still_since) = (n, Instant::now());
            } else if still_since.elapsed() >= Duration::from_secs(2) {
                return n;
            }
            assert!(Instant::now() < deadline, "the row count was still changing after 60 s ({n})");
        }
    }

    /// Waits until there are exactly `expected` rows, at most 60 s.
    pub fn wait_rows(&self, expected: i64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = self.rows();
            assert!(n <= expected, "{n} rows, more than the {expected} expected");
            if n == expected {
                return;
            }
            assert!(Instant::now() < deadline, "{n} rows after 60 s, expected {expected}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn nginx_error_log(&self) -> String {
        std::fs::read_to_string(self.ctl.dir.join("nginx/logs/error.log")).unwrap_or_default()
    }
}

impl Drop for Stack {
    /// A stack that does not come down fails the test (its processes would outlive the
    /// suite); while a test is already failing, the reason is printed instead.
    fn drop(&mut self) {
        let (ok, output) = self.ctl.script(&["down"]);
        if !ok {
            if std::thread::panicking() {
                eprintln!("scripts/stack.sh down failed: {output}");
            } else {
                panic!("scripts/stack.sh down failed: {output}");
            }
        }
    }
}
