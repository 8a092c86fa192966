use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};
use falcon_model::logistic::{ClassWeight, TrainConfig};
use falcon_model::tfidf::TfidfConfig;
use falcon_model::{TrainOptions, load_vader_dir, train};

#[derive(Clone, Copy, ValueEnum)]
enum Weighting {
    Uniform,
    Balanced,
    SqrtBalanced,
}

/// The kinds of model this build trains.
#[derive(Clone, Copy, ValueEnum)]
enum TrainBackend {
    /// TF-IDF word and bigram features and a logistic regression (the `tfidf` backend).
    Tfidf,
}

#[derive(Args)]
pub struct TrainArgs {
    /// Which kind of model to train (the `MODEL_BACKEND` that serves it).
    #[arg(long, value_enum, default_value = "tfidf")]
    backend: TrainBackend,
    /// Folder with the VADER `*_GroundTruth.txt` files.
    #[arg(long, default_value = "data/vader")]
    data: PathBuf,
    /// Where to write the model file.
    #[arg(long, default_value = "models/classifier.bin")]
    out: PathBuf,
    /// Seed of the stratified 80/20 split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Inverse regularisation strength of the logistic regression.
    #[arg(long, default_value_t = TrainConfig::default().c)]
    c: f64,
    /// Class weighting of the loss.
    #[arg(long, value_enum, default_value = "sqrt-balanced")]
    class_weight: Weighting,
    /// Minimum number of training documents an n-gram must occur in.
    #[arg(long, default_value_t = TfidfConfig::default().min_df)]
    min_df: usize,
    /// Use 1 + ln(tf) instead of raw term counts.
    #[arg(long, default_value_t = TfidfConfig::default().sublinear_tf, action = clap::ArgAction::Set)]
    sublinear_tf: bool,
    /// Upper bound on optimiser iterations.
    #[arg(long, default_value_t = TrainConfig::default().max_iter)]
    max_iter: usize,
}

pub fn run(args: &TrainArgs) -> ExitCode {
    // One kind today; a backend that trains differently gets its own arm here.
    let TrainBackend::Tfidf = args.backend;
    let started = Instant::now();
    let data = match load_vader_dir(&args.data) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let counts = data.class_counts();
    println!(
        "data: {} sentences from {} files (negative {}, neutral {}, positive {}), sha256 {}",
        data.texts.len(),
        data.files.len(),
        counts[0],
        counts[1],
        counts[2],
        &data.sha256[..16]
    );
    let opts = TrainOptions {
        seed: args.seed,
        tfidf: TfidfConfig { min_df: args.min_df, sublinear_tf: args.sublinear_tf, ..TfidfConfig::default() },
        optimizer: TrainConfig {
            c: args.c,
            class_weight: match args.class_weight {
                Weighting::Uniform => ClassWeight::Uniform,
                Weighting::Balanced => ClassWeight::Balanced,
                Weighting::SqrtBalanced => ClassWeight::SqrtBalanced,
            },
            max_iter: args.max_iter,
            ..TrainConfig::default()
        },
        ..TrainOptions::default()
    };
    let model = match train(&data, &opts) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let meta = model.meta();
    let fit = meta.training.fit;
    println!(
        "split: {} train / {} test (stratified, seed {}); {} features; optimiser: {} iterations, loss {:.5}, converged {}",
        meta.training.n_train,
        meta.training.n_test,
        args.seed,
        model.n_features(),
        fit.iterations,
        fit.final_loss,
        fit.converged
    );
    print!("{}", meta.metrics.render());
    if let Err(e) = model.save(&args.out) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    println!(
        "model {} written to {} in {:.1} s",
        model.model_version(),
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
