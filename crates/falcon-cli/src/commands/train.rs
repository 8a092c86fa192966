use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};
use falcon_bert::{Encoder, EncoderInfo, HeadOptions, train_head};
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
    /// A logistic-regression head over all-MiniLM-L6-v2 sentence embeddings (the `minilm`
    /// backend); needs the encoder's weights (--minilm-dir).
    Minilm,
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
    /// Where to write the model file [default: the shipped model: models/classifier.bin
    /// for tfidf, models/minilm-head.json for minilm].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The encoder's folder (config.json, model.safetensors, tokenizer.json), for
    /// --backend minilm.
    #[arg(long, env = "MINILM_DIR", default_value = ".tools/models/all-MiniLM-L6-v2")]
    minilm_dir: PathBuf,
    /// Keep the data set's embeddings in this file and reuse them when the weights and the
    /// data are the same (embedding the VADER set takes minutes; fitting a head, seconds),
    /// for --backend minilm.
    #[arg(long)]
    embedding_cache: Option<PathBuf>,
    /// Seed of the stratified 80/20 split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Inverse regularisation strength of the logistic regression [default: 8 for tfidf,
    /// 1 for minilm].
    #[arg(long)]
    c: Option<f64>,
    /// Class weighting of the loss [default: sqrt-balanced for tfidf, uniform for minilm].
    #[arg(long, value_enum)]
    class_weight: Option<Weighting>,
    /// Minimum number of training documents an n-gram must occur in.
    #[arg(long, default_value_t = TfidfConfig::default().min_df)]
    min_df: usize,
    /// Use 1 + ln(tf) instead of raw term counts.
    #[arg(long, default_value_t = TfidfConfig::default().sublinear_tf, action = clap::ArgAction::Set)]
    sublinear_tf: bool,
    /// Upper bound on optimiser iterations [default: 500 for tfidf, 1000 for minilm].
    #[arg(long)]
    max_iter: Option<usize>,
}

pub fn run(args: &TrainArgs) -> ExitCode {
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
    match args.backend {
        TrainBackend::Tfidf => train_tfidf(args, &data, started),
        TrainBackend::Minilm => train_minilm(args, &data, started),
    }
}

fn optimizer(args: &TrainArgs, defaults: TrainConfig) -> TrainConfig {
    TrainConfig {
        c: args.c.unwrap_or(defaults.c),
        class_weight: match args.class_weight {
            None => defaults.class_weight,
            Some(Weighting::Uniform) => ClassWeight::Uniform,
            Some(Weighting::Balanced) => ClassWeight::Balanced,
            Some(Weighting::SqrtBalanced) => ClassWeight::SqrtBalanced,
        },
        max_iter: args.max_iter.unwrap_or(defaults.max_iter),
        ..defaults
    }
}

fn train_tfidf(args: &TrainArgs, data: &Dataset, started: Instant) -> ExitCode {
    let opts = TrainOptions {
        seed: args.seed,
        tfidf: TfidfConfig { min_df: args.min_df, sublinear_tf: args.sublinear_tf, ..TfidfConfig::default() },
        optimizer: optimizer(args, TrainConfig::default()),
        ..TrainOptions::default()
    };
    let model = match train(data, &opts) {
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

/// Embeds every text with the encoder, then fits and scores the head on the same split as
/// the TF-IDF model's.
fn train_minilm(args: &TrainArgs, data: &Dataset, started: Instant) -> ExitCode {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    };
    let encoder = match Encoder::load(&args.minilm_dir, &candle_core::Device::Cpu) {
        Ok(e) => e,
        Err(e) => return fail(&e),
    };
    println!(
        "encoder: {} ({}-d, {} tokens at most, weights sha256 {})",
        args.minilm_dir.display(),
        encoder.dim(),
        encoder.max_tokens(),
        &encoder.weights_sha256()[..16]
    );
    let key = format!(
        "falcon embeddings v1 weights={} data={} texts={} dim={} max_tokens={}\n",
        encoder.weights_sha256(),
        data.sha256,
        data.texts.len(),
        encoder.dim(),
        encoder.max_tokens()
    );
    let cached = args.embedding_cache.as_deref().and_then(|f| read_embeddings(f, &key, encoder.dim()));
    let embeddings = match cached {
        Some(e) => {
            println!(
                "embeddings: {} texts from {}",
                e.len(),
                args.embedding_cache.as_deref().unwrap_or(Path::new("")).display()
            );
            e
        }
        None => {
            let texts: Vec<&str> = data.texts.iter().map(String::as_str).collect();
            let embed_started = Instant::now();
            let mut reported = 0;
            let embeddings = match encoder.embed_corpus(&texts, 32, |done| {
                if done - reported >= 2000 || done == texts.len() {
                    reported = done;
                    println!("embedded {done}/{} texts in {:.0} s", texts.len(), embed_started.elapsed().as_secs_f64());
                }
            }) {
                Ok(e) => e,
                Err(e) => return fail(&e),
            };
            if let Some(file) = &args.embedding_cache
                && let Err(e) = write_embeddings(file, &key, &embeddings)
            {
                eprintln!("warning: cannot keep the embeddings in {}: {e}", file.display());
            }
            embeddings
        }
    };
    let info = EncoderInfo {
        weights_sha256: encoder.weights_sha256().to_owned(),
        dim: encoder.dim(),
        max_tokens: encoder.max_tokens(),
    };
    let defaults = HeadOptions::default();
    let opts = HeadOptions { seed: args.seed, optimizer: optimizer(args, defaults.optimizer), ..defaults };
    let head = match train_head(data, &embeddings, info, falcon_bert::NAME, &opts) {
        Ok(h) => h,
        Err(e) => return fail(&e),
    };
    let fit = head.training.fit;
    println!(
        "split: {} train / {} test (stratified, seed {}); optimiser: {} iterations, loss {:.5}, converged {}",
        head.training.n_train, head.training.n_test, args.seed, fit.iterations, fit.final_loss, fit.converged
    );
    print!("{}", head.metrics.render());
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("models/minilm-head.json"));
    if let Err(e) = head.save(&out) {
        return fail(&e);
    }
    println!("head {} written to {} in {:.1} s", head.model_version(), out.display(), started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

/// The embeddings `write_embeddings` kept under `key`, if the file holds them.
fn read_embeddings(file: &Path, key: &str, dim: usize) -> Option<Vec<Vec<f32>>> {
    let bytes = std::fs::read(file).ok()?;
    let body = bytes.strip_prefix(key.as_bytes())?;
    if dim == 0 || body.len() % (4 * dim) != 0 {
        return None;
    }
    let values: Vec<f32> = body.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Some(values.chunks(dim).map(<[f32]>::to_vec).collect())
}

/// Keeps `embeddings` in `file`: the key line, then every value as little-endian f32.
fn write_embeddings(file: &Path, key: &str, embeddings: &[Vec<f32>]) -> std::io::Result<()> {
    let mut out = key.as_bytes().to_vec();
    for v in embeddings.iter().flatten() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(file, out)
}

/// The training data: the user's CSV, or the VADER folder.
fn load(args: &TrainArgs) -> Result<Dataset, ModelError> {
    match &args.csv {
        Some(csv) => load_csv(csv, CsvColumns { text: &args.text_column, label: &args.label_column }),
        None => load_vader_dir(&args.data),
    }
}
