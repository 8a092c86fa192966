use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use falcon_model::SentimentModel;

#[derive(Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Print a model file's metadata and evaluation report (the built-in model without FILE).
    Inspect {
        /// Model file made by `falcon train`.
        file: Option<PathBuf>,
        /// Print the metadata as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: &ModelArgs) -> ExitCode {
    let ModelCommand::Inspect { file, json } = &args.command;
    let model = match file {
        Some(path) => SentimentModel::load(path),
        None => SentimentModel::shipped(),
    };
    let model = match model {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let meta = model.meta();
    if *json {
        return match serde_json::to_string_pretty(meta) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let t = &meta.training;
    println!("model {}", file.as_ref().map_or_else(|| "built-in".to_owned(), |p| p.display().to_string()));
    println!("version:      {}", meta.model_version);
    println!("format:       falcon binary model v{}", falcon_model::FORMAT_VERSION);
    println!("size:         {} bytes", model.to_bytes().len());
    println!("created at:   {}", meta.created_at);
    println!("labels:       {}", meta.labels.join(", "));
    println!("features:     {} (word {}..={}-grams)", model.n_features(), t.tfidf.min_n, t.tfidf.max_n);
    println!(
        "trained on:   {} sentences ({} train / {} test, seed {}), data sha256 {}",
        t.n_samples,
        t.n_train,
        t.n_test,
        t.seed,
        &t.data_sha256[..16.min(t.data_sha256.len())]
    );
    print!("{}", meta.metrics.render());
    ExitCode::SUCCESS
}
