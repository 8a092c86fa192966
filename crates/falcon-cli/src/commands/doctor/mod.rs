//! `falcon doctor`: the runbook's diagnosis, run for you. It gathers what an on-call engineer
//! gathers by hand (health, readiness, two metric scrapes, Redis and Postgres facts), names
//! the runbook incident each problem belongs to, shows the numbers, and prints the commands
//! that resolve it for this deployment. Read-only: it never changes anything it looks at.
//!
//! Exit status: 0 healthy, 1 warning, 2 critical (and 2 for a bad command line, as clap).

mod diagnose;
mod gather;
mod playbook;
mod prom;
mod report;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};

use self::gather::{Inventory, Target};
use self::playbook::{Playbook, Shape};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stack {
    /// The native stack of scripts/stack.sh (reads STACK_DIR/stack.env).
    Native,
    /// docker-compose.yml's published ports on this host: workers on :8000-8002, nginx on
    /// :80, Redis on :6379, Postgres on :5432 (POSTGRES_USER/PASSWORD/DB or compose's defaults).
    Compose,
}

#[derive(Args)]
pub struct DoctorArgs {
    /// A worker's base URL (repeat for each worker). Default: http://127.0.0.1:8000.
    #[arg(long = "url", value_name = "URL", conflicts_with = "stack")]
    urls: Vec<String>,
    /// Examine a whole stack: its workers, nginx, Redis and Postgres.
    #[arg(long, value_enum)]
    stack: Option<Stack>,
    /// The native stack's directory.
    #[arg(long, env = "STACK_DIR", default_value = ".stack")]
    stack_dir: PathBuf,
    /// Redis to examine (read-only: PING, INFO, CONFIG GET, SLOWLOG LEN).
    #[arg(long = "redis", env = "REDIS_URL", value_name = "URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Postgres to examine (read-only session; a SQLite path is skipped).
    #[arg(long = "database", env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: Option<String>,
    /// How the workers are deployed, for the commands it prints. Default: what --stack
    /// says; else detected: kubernetes in a pod, systemd where /etc/falcon/falcon.env is,
    /// native where STACK_DIR holds a stack, compose where a docker daemon is, else local (one
    /// worker run by hand: `make run`).
    #[arg(long, value_enum)]
    deployment: Option<Shape>,
    /// Seconds between the two metric scrapes that rates are computed from.
    #[arg(long, env = "DOCTOR_INTERVAL_SECONDS", default_value_t = 5.0, value_parser = seconds)]
    interval: f64,
    /// Give up on any one probe after this many seconds.
    #[arg(long, default_value_t = 3.0, value_parser = seconds)]
    timeout: f64,
    /// One JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// Run again every SECS seconds until interrupted.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    watch: Option<f64>,
}

fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("'{text}' is not a positive number of seconds")),
    }
}

pub fn run(args: &DoctorArgs) -> ExitCode {
    let inventory = match inventory(args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("falcon doctor: {e}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    let shape = args.deployment.unwrap_or_else(|| Shape::detect(args.stack, &args.stack_dir));
    let book = Playbook {
        shape,
        stack_dir: inventory
            .stack_dir
            .as_ref()
            .filter(|d| d.as_path() != std::path::Path::new(".stack"))
            .map(|d| d.display().to_string()),
        redis: inventory.redis_url.as_deref().map(gather::redact),
        database: inventory.database_url.as_deref().filter(|u| gather::is_postgres(u)).map(gather::redact),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("falcon doctor: {e}");
            return ExitCode::FAILURE;
        }
    };
    let interval = Duration::from_secs_f64(args.interval);
    let timeout = Duration::from_secs_f64(args.timeout);
    let terminal = std::io::stdout().is_terminal();
    let colour = terminal && std::env::var_os("NO_COLOR").is_none();
    runtime.block_on(async {
        // Registered once, before the first run: Ctrl-C during a gather ends the watch too.
        let mut interrupt = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("falcon doctor: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut code = 0;
        loop {
            let seen = tokio::select! {
                seen = gather::gather(&inventory, interval, timeout) => seen,
                _ = interrupt.recv() => return ExitCode::from(code),
            };
            let stats: Vec<_> = seen.workers.iter().map(diagnose::WorkerStats::from_seen).collect();
            let findings = diagnose::diagnose(&seen, &stats, &book);
            let report = report::Report::new(&seen, &stats, &findings, shape);
            code = report.exit_code;
            if args.json {
                println!("{}", report.json());
            } else {
                if args.watch.is_some() && terminal {
                    // Clear the screen and go home, like watch(1).
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", report.text(colour));
            }
            let Some(every) = args.watch else { return ExitCode::from(code) };
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs_f64(every)) => {}
                _ = interrupt.recv() => return ExitCode::from(code),
            }
        }
    })
}

fn inventory(args: &DoctorArgs) -> Result<Inventory, String> {
    let mut inventory = match args.stack {
        Some(Stack::Native) => Inventory::native(&args.stack_dir)?,
        Some(Stack::Compose) => Inventory::compose(),
        None => {
            let urls = if args.urls.is_empty() { vec!["http://127.0.0.1:8000".to_owned()] } else { args.urls.clone() };
            let workers = urls
                .into_iter()
                .map(|u| {
                    let url = u.trim_end_matches('/').to_owned();
                    if !url.starts_with("http://") {
                        return Err(format!("--url {u}: give a plain http:// base URL, e.g. http://127.0.0.1:8000"));
                    }
                    Ok(Target { name: url.clone(), url, pid_file: None, log_file: None })
                })
                .collect::<Result<_, _>>()?;
            Inventory { workers, ..Inventory::default() }
        }
    };
    // The native stack names its own dependencies; otherwise the flags (or the worker's own
    // REDIS_URL / DATABASE_URL from the environment or .env) do.
    if inventory.redis_url.is_none() {
        inventory.redis_url = args.redis_url.clone().filter(|u| !u.is_empty());
    }
    if inventory.database_url.is_none() {
        inventory.database_url = args.database_url.clone().filter(|u| !u.is_empty());
    }
    Ok(inventory)
}
