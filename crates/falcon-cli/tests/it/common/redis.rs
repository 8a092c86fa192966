//! A throwaway `redis-server` on a free loopback port in a temp dir: tests kill, restart
//! and pause it without touching the machine's shared Redis.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = crate::common::free_port();
        let mut s = Self { port, dir: tempfile::tempdir().unwrap(), child: None };
        s.restart();
        s
    }

    /// A handle to send commands to an already running server (owns no process).
    pub fn attach(port: u16) -> Self {
        Self { port, dir: tempfile::tempdir().unwrap(), child: None }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts (again) on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            // DEBUG SLEEP is refused without it (Redis 7), and the hang tests need it.
            .args(["--enable-debug-command", "yes"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command("PING").as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: Redis vanishes as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends one inline command and returns the first reply line (`None` if unreachable).
    pub fn command(&self, cmd: &str) -> Option<String> {
        self.command_within(cmd, Duration::from_secs(10))
    }

    /// Like `command`, giving up on the reply after `within`.
    pub fn command_within(&self, cmd: &str, within: Duration) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(within)).ok()?;
        s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        Some(line.trim_end().to_owned())
    }

    /// A numeric field of `INFO` (`used_memory`, `evicted_keys`), read with redis-cli.
    pub fn info(&self, field: &str) -> u64 {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string(), "INFO"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in INFO: {text}"))
    }

    /// Number of keys matching a pattern (`KEYS pattern`). Fails if Redis does not answer:
    /// an unreachable server must never read as "no keys".
    pub fn count_keys(&self, pattern: &str) -> usize {
        let reply = self.command(&format!("KEYS {pattern}")).expect("redis-server is not answering");
        reply.strip_prefix('*').and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("KEYS replied {reply:?}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
