use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use falcon_server::api::{InferResponse, new_request_id, validate_text};

#[derive(Args)]
pub struct PredictArgs {
    /// The text to classify.
    text: String,
    /// Model file to use.
    #[arg(long, env = "MODEL_PATH", default_value = "models/classifier.json")]
    model_path: PathBuf,
}

pub fn run(args: &PredictArgs) -> ExitCode {
    if let Err(e) = validate_text(&args.text) {
        eprintln!("error: {e}");
        return ExitCode::from(super::EXIT_CONFIG);
    }
    let (model, _) = match falcon_server::startup::load_model(&args.model_path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let p = model.predict(&args.text);
    let worker_id = std::env::var("WORKER_ID").unwrap_or_else(|_| "cli".into());
    let mut resp = InferResponse::new(&p, model.labels(), model.model_version(), &worker_id, &new_request_id());
    resp.processing_time_ms = started.elapsed().as_secs_f64() * 1000.0;
    match serde_json::to_string_pretty(&resp) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
