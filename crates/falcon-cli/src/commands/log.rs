//! `falcon log prune`: the request log's retention by hand, the same run each worker makes
//! every hour (see `falcon_app::adapters::request_log::retention`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use falcon_app::adapters::request_log::Sink;
use falcon_app::adapters::request_log::retention::{Maintenance, Retention};
use falcon_app::config::DatabaseConfig;

#[derive(Args)]
pub struct LogArgs {
    #[command(subcommand)]
    command: LogCommand,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Remove the request log's rows past retention: drop whole day partitions (Postgres) or
    /// delete rows in batches (the embedded SQLite file), and create the coming days'
    /// partitions. Workers do this every hour; this is the same run, by hand.
    Prune(PruneArgs),
}

#[derive(Args)]
pub struct PruneArgs {
    /// Keep this many whole UTC days (`30d` or `30`): today and the N days before it.
    /// Default: REQUEST_LOG_RETENTION_DAYS.
    #[arg(long, value_parser = days)]
    older_than: Option<u32>,
    /// Print what would be removed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Where the request log is: the worker's own settings.
    #[command(flatten)]
    database: DatabaseConfig,
}

/// `30d` or `30`, at least 1.
fn days(s: &str) -> Result<u32, String> {
    let n = s.strip_suffix('d').unwrap_or(s);
    match n.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a number of days (at least 1), such as 30d")),
    }
}

pub fn run(args: &LogArgs) -> ExitCode {
    let LogCommand::Prune(prune) = &args.command;
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(prune_log(prune)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn prune_log(args: &PruneArgs) -> Result<ExitCode, String> {
    let days = args.older_than.unwrap_or(args.database.request_log_retention_days);
    if days == 0 {
        return Err(
            "retention is off (REQUEST_LOG_RETENTION_DAYS=0): say how many days to keep with --older-than 30d".into()
        );
    }
    let retention = Retention::days(days);
    let sink = match args.database.postgres_url() {
        Some(url) => Sink::postgres(url.expose(), 2, Duration::from_secs(5)).map_err(|e| e.to_string())?,
        None => {
            let path = &args.database.request_log_sqlite_path;
            if !path.exists() {
                return Err(format!(
                    "no request log at {} (REQUEST_LOG_SQLITE_PATH), and no Postgres configured",
                    path.display()
                ));
            }
            Sink::sqlite(path, falcon_app::adapters::request_log::WriterPriority::Nice(0), Duration::from_secs(5))
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    if !args.dry_run {
        // The schema of this build first: a table from before partitioning is converted.
        sink.migrate().await.map_err(|e| format!("migrating the request log: {e}"))?;
    }
    let now = chrono::Utc::now();
    let cutoff = retention.cutoff(now).ok_or("retention out of range")?;
    println!(
        "request log: {}; keeping today (UTC) and the {days} days before it; removing what is before {}",
        sink.backend(),
        cutoff.to_rfc3339()
    );
    let done = sink.maintain(retention, now, args.dry_run).await.map_err(|e| e.to_string())?;
    sink.close().await;
    print!("{}", describe(&done, sink.backend(), args.dry_run));
    Ok(if done.skipped || !done.failed.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// What a run did, a line each, as the operator reads it.
fn describe(done: &Maintenance, backend: &str, dry_run: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if done.skipped {
        out.push_str("another worker is maintaining the request log right now; nothing done (try again shortly)\n");
        return out;
    }
    let (create, drop, delete) =
        if dry_run { ("would create", "would drop", "would delete") } else { ("created", "dropped", "deleted") };
    for name in &done.created {
        let _ = writeln!(out, "{create} partition {name}");
    }
    for d in &done.dropped {
        let _ = writeln!(
            out,
            "{drop} partition {} (rows before {}, about {} rows)",
            d.name,
            d.before.to_rfc3339(),
            d.rows_estimate
        );
    }
    if done.stray_rows > 0 {
        let _ = writeln!(out, "{delete} {} rows past retention from inference_logs_default", done.stray_rows);
    }
    for failure in &done.failed {
        let _ = writeln!(out, "failed: {failure}");
    }
    if backend == "sqlite" {
        let _ = writeln!(out, "{delete} {} rows", done.rows);
    } else {
        let _ = writeln!(out, "{drop} {} partitions, about {} rows", done.dropped.len(), done.rows);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_take_a_number_with_or_without_d() {
        assert_eq!(days("30d"), Ok(30));
        assert_eq!(days("7"), Ok(7));
        for bad in ["0d", "0", "-1d", "30 days", "d", ""] {
            assert!(days(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_dry_run_says_what_it_would_do() {
        let done = Maintenance {
            created: vec!["inference_logs_p20261207".into()],
            dropped: vec![falcon_app::adapters::request_log::retention::Dropped {
                name: "inference_logs_p20261001".into(),
                before: chrono::DateTime::parse_from_rfc3339("2026-10-02T00:00:00Z").unwrap().into(),
                rows_estimate: 12,
            }],
            rows: 12,
            ..Maintenance::default()
        };
        let text = describe(&done, "postgres", true);
        assert_eq!(
            text,
            "would create partition inference_logs_p20261207\n\
             would drop partition inference_logs_p20261001 (rows before 2026-10-02T00:00:00+00:00, about 12 rows)\n\
             would drop 1 partitions, about 12 rows\n"
        );
        assert_eq!(describe(&Maintenance { rows: 5, ..Maintenance::default() }, "sqlite", false), "deleted 5 rows\n");
    }
}
