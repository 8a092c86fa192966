use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};
use falcon_model::logistic::{ClassWeight, TrainConfig};
use falcon_model::tfidf::TfidfConfig;
use falcon_model::{CsvColumns, Dataset, ModelError, TrainOptions, load_csv, load_vader_dir, train};

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
    /// Folder with the VADER `*_GroundTruth.txt` files (the shipped sentiment model's data).
    #[arg(long, default_value = "data/vader")]
    data: PathBuf,
    /// Train on a CSV of your own instead: a header row, a text column and a label column
    /// (any number of labels, 2 or more, taken from the data). Needs --out.
    #[arg(long, conflicts_with = "data", requires = "out")]
    csv: Option<PathBuf>,
    /// The CSV's text column.
    #[arg(long, default_value = "text", requires = "csv")]
    text_column: String,
    /// The CSV's label column.
    #[arg(long, default_value = "label", requires = "csv")]
    label_column: String,
    /// Where to write the model file [default: models/classifier.bin, the shipped model].
    #[arg(long)]
    out: Option<PathBuf>,
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
    let data = match load(args) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let counts: Vec<String> =
        data.label_names.iter().zip(data.class_counts()).map(|(name, n)| format!("{name} {n}")).collect();
    println!(
        "data: {} texts from {} file(s) ({}), sha256 {}",
        data.texts.len(),
        data.files.len(),
        counts.join(", "),
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
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("models/classifier.bin"));
    if let Err(e) = model.save(&out) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    println!(
        "model {} written to {} in {:.1} s",
        model.model_version(),
        out.display(),
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

/// The training data: the user's CSV, or the VADER folder.
fn load(args: &TrainArgs) -> Result<Dataset, ModelError> {
    match &args.csv {
        Some(csv) => load_csv(csv, CsvColumns { text: &args.text_column, label: &args.label_column }),
        None => load_vader_dir(&args.data),
    }
}
