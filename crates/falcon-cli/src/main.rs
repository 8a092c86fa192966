//! `falcon`: serve the classifier, train and inspect it, predict from the shell, diagnose a
//! deployment, load-test a worker.
#![forbid(unsafe_code)]

mod backends;
mod client;
mod commands;

/// mimalloc instead of glibc malloc: requests allocate on a runtime thread and free on
/// an inference thread, a pattern glibc's arenas handle poorly (~16 % of worker CPU in
/// the unique-text benchmark went to malloc/free before the switch).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "falcon", version, about = "Falcon ML inference platform: a sentiment classifier served over HTTP")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an inference worker (configuration from flags, environment and `.env`).
    Serve(Box<falcon_server::Config>),
    /// Train the classifier on the VADER data and write a model file.
    Train(commands::train::TrainArgs),
    /// Inspect a model file (version, labels, training data, evaluation, class mix) or score
    /// it on a labelled CSV.
    Model(commands::model::ModelArgs),
    /// Classify one text and print the same JSON as POST /infer.
    Predict(commands::predict::PredictArgs),
    /// Diagnose running workers, Redis and Postgres the way the runbook does, and print the
    /// commands that resolve what it finds (exit 0 healthy, 1 warning, 2 critical).
    Doctor(commands::doctor::DoctorArgs),
    /// Drive a running worker with HTTP load and report throughput and latency.
    Load(commands::load::LoadArgs),
    /// The request log's storage: `falcon log prune` removes what is past retention (what
    /// workers do every hour).
    Log(commands::log::LogArgs),
    /// Exit 0 if the worker on this host answers its health endpoint with 200 (for
    /// container HEALTHCHECKs).
    Healthcheck(commands::healthcheck::HealthcheckArgs),
    /// Print the OpenAPI 3.1 document of the HTTP API (what a worker serves at /openapi.json).
    Openapi,
}

fn main() -> ExitCode {
    // A `.env` in the working directory fills variables that are not already set.
    let dotenv = dotenvy::dotenv();
    // ONNX Runtime's Linux build (the minilm backend's runtime) carries Microsoft's telemetry
    // SDK, which writes a session file into TMPDIR even with telemetry events disabled. A
    // worker sends nothing anywhere: its one off switch is set here, in the process's own
    // environment, before any thread starts (unless the environment or `.env` already says).
    let _ = dotenvy::from_read("ORT_DISABLE_TELEMETRY=1\n".as_bytes());
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => return commands::config_error(&e),
    };
    if let Err(e) = dotenv
        && !e.not_found()
    {
        eprintln!("warning: .env ignored: {e}");
    }
    match cli.command {
        Command::Serve(config) => commands::serve::run(*config),
        Command::Train(args) => commands::train::run(&args),
        Command::Model(args) => commands::model::run(&args),
        Command::Predict(args) => commands::predict::run(&args),
        Command::Doctor(args) => commands::doctor::run(&args),
        Command::Load(args) => commands::load::run(&args),
        Command::Log(args) => commands::log::run(&args),
        Command::Healthcheck(args) => commands::healthcheck::run(&args),
        Command::Openapi => commands::openapi::run(),
    }
}
