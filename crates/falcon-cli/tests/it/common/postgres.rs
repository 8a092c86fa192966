//! A throwaway PostgreSQL cluster (initdb + pg_ctl) on a free loopback port in a temp
//! dir: tests stop and start it without touching the machine's shared Postgres.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    running: bool,
}

fn bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("sh").args(["-c", "command -v initdb"]).output()
        && out.status.success()
    {
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let real = std::fs::canonicalize(&path).unwrap_or(path);
        return real.parent().unwrap().to_owned();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries (apt-get install postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect("no initdb under /usr/lib/postgresql/*/bin")
}

/// Runs a server binary, as the `postgres` user when we are root (initdb refuses root).
fn run(bin: &Path, args: &[&str]) -> Output {
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    let mut cmd = if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args).output().unwrap()
}

impl Postgres {
    pub fn start() -> Self {
        let port = crate::common::free_port();
        let dir = tempfile::tempdir().unwrap();
        let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).output();
        let bin = bin_dir();
        let data = dir.path().join("data");
        let out =
            run(&bin.join("initdb"), &["-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres", "--no-sync"]);
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut pg = Self { port, dir, bin, running: false };
        pg.start_again();
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn start_again(&mut self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("server.log");
        let opts = format!(
            // fsync=off only risks data on an OS crash; commits still reach the WAL, so an
            // immediate (crash) shutdown of the server loses nothing committed.
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        // Set first: a start that fails half-way is still stopped on drop.
        self.running = true;
        let out = run(
            &self.bin.join("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-o", &opts, "-w", "start"],
        );
        assert!(out.status.success(), "pg_ctl start failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Immediate shutdown: connections drop as in a crash.
    pub fn stop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = run(&self.bin.join("pg_ctl"), &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
        self.running = false;
    }

    /// Runs SQL with psql and returns its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-tA",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Rows in `inference_logs`; 0 before the first write has created the table.
    pub fn count_rows(&self) -> i64 {
        let exists = self.psql("SELECT to_regclass('inference_logs') IS NOT NULL");
        if exists != "t" {
            return 0;
        }
        self.psql("SELECT count(*) FROM inference_logs").parse().unwrap_or(-1)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            self.stop();
        }
    }
}
