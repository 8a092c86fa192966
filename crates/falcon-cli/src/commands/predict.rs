use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use falcon_app::pipeline::{Answer, AnsweredBy, Inferred, validate_text};
use falcon_server::http::api::{InferResponse, new_request_id};

use crate::backends;

#[derive(Args)]
pub struct PredictArgs {
    /// The text to classify.
    text: String,
    /// Which model implementation to use (`tfidf`, or `minilm` with MINILM_DIR).
    #[arg(long, env = "MODEL_BACKEND", default_value = "tfidf")]
    model_backend: String,
    /// Model file to use [default: the model built into the binary].
    #[arg(long, env = "MODEL_PATH")]
    model_path: Option<PathBuf>,
    /// A model repository file (TOML), as `falcon serve` takes it.
    #[arg(long, env = "MODEL_REPOSITORY")]
    model_repository: Option<PathBuf>,
    /// The model of the repository to ask [default: the repository's default].
    #[arg(long)]
    model: Option<String>,
}

pub fn run(args: &PredictArgs) -> ExitCode {
    let repository =
        match backends::repository(args.model_repository.as_deref(), &args.model_backend, args.model_path.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(super::EXIT_CONFIG);
            }
        };
    let name = args.model.clone().unwrap_or_else(|| repository.default.clone());
    let Some(spec) = repository.models.get(&name) else {
        let known = repository.models.keys().cloned().collect::<Vec<_>>().join(", ");
        eprintln!("error: unknown model {name:?}; {} has: {known}", repository.source());
        return ExitCode::from(super::EXIT_CONFIG);
    };
    let loaded = match backends::load_spec(spec) {
        Ok(m) => m,
        Err(e @ backends::LoadError::UnknownBackend(_)) => {
            eprintln!("error: {e}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let model = loaded.backend;
    if let Err(e) = validate_text(&args.text, model.max_input_chars()) {
        eprintln!("error: {e}");
        return ExitCode::from(super::EXIT_CONFIG);
    }
    let started = Instant::now();
    let p = match model.predict_batch(&[args.text.as_str()]).map(|mut v| v.pop()) {
        Ok(Some(p)) => p,
        Ok(None) => {
            eprintln!("error: the model gave no prediction");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let worker_id = std::env::var("WORKER_ID").unwrap_or_else(|_| "cli".into());
    let served = Inferred {
        answer: Answer { prediction: Arc::new(p), cache_hit: false, idempotency_hit: false },
        by: AnsweredBy { name: Arc::from(name.as_str()), model },
        processing_time: started.elapsed(),
    };
    let resp = InferResponse::new(&served, &worker_id, &new_request_id());
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
