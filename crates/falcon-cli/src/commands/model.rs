//! `falcon model inspect` (what a model file holds) and `falcon model eval` (how a model
//! scores on a labelled CSV): how an operator checks a candidate before a reload.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use falcon_model::SentimentModel;
use falcon_model::eval::{Evaluation, evaluate};

#[derive(Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Print a model file's metadata, evaluation report and class distribution (the
    /// built-in model without FILE).
    Inspect {
        /// Model file made by `falcon train` (for minilm: a head file).
        file: Option<PathBuf>,
        /// Print the metadata as JSON.
        #[arg(long)]
        json: bool,
        /// The model's backend: `tfidf`, or `minilm` (a head file, or the built-in head).
        #[arg(long, env = "MODEL_BACKEND", default_value = "tfidf")]
        backend: String,
    },
    /// Score a model on a labelled CSV: accuracy, macro-F1, per-class report, confusion matrix.
    Eval {
        /// Model file made by `falcon train`, or `built-in` (for minilm: a head file, run
        /// with the encoder in MINILM_DIR).
        file: PathBuf,
        /// CSV with a header row and columns `text` and `label` (a label name such as
        /// `positive`, or its class index); other columns are ignored.
        data: PathBuf,
        /// Print the evaluation as JSON.
        #[arg(long)]
        json: bool,
        /// The model's backend: `tfidf`, or `minilm`.
        #[arg(long, env = "MODEL_BACKEND", default_value = "tfidf")]
        backend: String,
    },
}

pub fn run(args: &ModelArgs) -> ExitCode {
    let result = match &args.command {
        ModelCommand::Inspect { file, json, backend } if backend == falcon_bert::NAME => {
            inspect_head(file.as_deref(), *json)
        }
        ModelCommand::Inspect { file, json, .. } => inspect(file.as_deref(), *json),
        ModelCommand::Eval { file, data, json, backend } => eval(backend, file, data, *json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(file: Option<&Path>) -> Result<SentimentModel, String> {
    match file {
        Some(p) if p != Path::new("built-in") => SentimentModel::load(p),
        _ => SentimentModel::shipped(),
    }
    .map_err(|e| e.to_string())
}

fn inspect(file: Option<&Path>, json: bool) -> Result<(), String> {
    let model = load(file)?;
    let meta = model.meta();
    if json {
        let text = serde_json::to_string_pretty(meta).map_err(|e| e.to_string())?;
        println!("{text}");
        return Ok(());
    }
    let t = &meta.training;
    println!("model {}", file.map_or_else(|| "built-in".to_owned(), |p| p.display().to_string()));
    println!("version:      {}", meta.model_version);
    println!("format:       falcon binary model v{}", falcon_model::FORMAT_VERSION);
    println!("size:         {} bytes", model.to_bytes().len());
    println!("created at:   {}", meta.created_at);
    println!("labels:       {}", meta.labels.join(", "));
    println!("features:     {} (word {}..={}-grams)", model.n_features(), t.tfidf.min_n, t.tfidf.max_n);
    trained_on(t.n_samples, t.n_train, t.n_test, t.seed, &t.data_sha256);
    let shares = |s: Option<Vec<f64>>| {
        s.map_or_else(
            || "-".to_owned(),
            |s| {
                let parts: Vec<String> =
                    meta.labels.iter().zip(s).map(|(l, v)| format!("{l} {:.1} %", v * 100.0)).collect();
                parts.join(", ")
            },
        )
    };
    println!("class mix:    {} (labels of the test split)", shares(meta.metrics.true_shares()));
    println!(
        "predicted:    {} (on the test split: the drift baseline, model_reference_class_share)",
        shares(meta.metrics.predicted_shares())
    );
    print!("{}", meta.metrics.render());
    Ok(())
}

/// The `trained on:` line of `model inspect`.
fn trained_on(samples: usize, train: usize, test: usize, seed: u64, data_sha256: &str) {
    println!(
        "trained on:   {samples} sentences ({train} train / {test} test, seed {seed}), data sha256 {}",
        &data_sha256[..16.min(data_sha256.len())]
    );
}

/// `model inspect` of a MiniLM head: what it reads, how it was trained, how it scored.
fn inspect_head(file: Option<&Path>, json: bool) -> Result<(), String> {
    let head = match file {
        Some(p) if p != Path::new("built-in") => falcon_bert::Head::load(p),
        _ => falcon_bert::shipped_head(),
    }
    .map_err(|e| e.to_string())?;
    if json {
        let mut value = serde_json::to_value(&head).map_err(|e| e.to_string())?;
        if let Some(o) = value.as_object_mut() {
            o.remove("coef");
            o.remove("intercept");
            o.insert("model_version".into(), head.model_version().into());
        }
        println!("{}", serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?);
        return Ok(());
    }
    let t = &head.training;
    println!("model {} (minilm head)", file.map_or_else(|| "built-in".to_owned(), |p| p.display().to_string()));
    println!("version:      {}", head.model_version());
    println!("format:       {} v{}", head.format, head.format_version);
    println!("created at:   {}", head.created_at);
    println!("labels:       {}", head.labels.join(", "));
    println!(
        "encoder:      {}-d mean-pooled embeddings, {} tokens at most, weights sha256 {}",
        head.encoder.dim, head.encoder.max_tokens, head.encoder.weights_sha256
    );
    trained_on(t.n_samples, t.n_train, t.n_test, t.seed, &t.data_sha256);
    println!("optimiser:    C {}, {} iterations, converged {}", t.optimizer.c, t.fit.iterations, t.fit.converged);
    print!("{}", head.metrics.render());
    Ok(())
}

/// `model eval` through the serving backend (`backends::load`), in batches of 32.
fn eval(backend: &str, file: &Path, data: &Path, json: bool) -> Result<(), String> {
    let path = (file != Path::new("built-in")).then_some(file);
    let model = crate::backends::load(backend, path).map_err(|e| format!("{e:#}"))?.backend;
    let text = std::fs::read_to_string(data).map_err(|e| format!("{}: {e}", data.display()))?;
    let labels: Vec<&str> = model.labels().iter().map(String::as_str).collect();
    let rows = read_labelled_csv(&text, &labels).map_err(|e| format!("{}: {e}", data.display()))?;
    if rows.is_empty() {
        return Err(format!("{}: no rows", data.display()));
    }
    let y_true: Vec<usize> = rows.iter().map(|(_, l)| *l).collect();
    let mut y_pred = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(32) {
        let texts: Vec<&str> = chunk.iter().map(|(t, _)| t.as_str()).collect();
        y_pred.extend(model.predict_batch(&texts).map_err(|e| e.to_string())?.into_iter().map(|p| p.class));
    }
    let report = evaluate(&y_true, &y_pred, &labels);
    print_eval(file, data, model.model_version(), rows.len(), &report, json)
}

fn print_eval(
    file: &Path,
    data: &Path,
    version: &str,
    rows: usize,
    report: &Evaluation,
    json: bool,
) -> Result<(), String> {
    if json {
        let value =
            serde_json::json!({ "model_version": version, "data": data.display().to_string(), "evaluation": report });
        println!("{}", serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?);
    } else {
        println!("model {} ({version})", file.display());
        println!("data  {} ({rows} rows)", data.display());
        print!("{}", report.render().replacen("test set:", "evaluated on:", 1));
    }
    Ok(())
}

/// `(text, class)` rows of a CSV with a header naming `text` and `label` columns. Fields
/// may be quoted (`"..."`, with `""` for a quote inside, newlines allowed).
fn read_labelled_csv(text: &str, labels: &[&str]) -> Result<Vec<(String, usize)>, String> {
    let records = parse_csv(text)?;
    let mut records = records.into_iter();
    let header = records.next().ok_or("empty file")?;
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
            .ok_or(format!("no `{name}` column in the header"))
    };
    let (text_col, label_col) = (column("text")?, column("label")?);
    let mut rows = Vec::new();
    for (i, record) in records.enumerate() {
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let line = i + 2;
        let text = record.get(text_col).ok_or(format!("row {line}: no text field"))?;
        let label = record.get(label_col).ok_or(format!("row {line}: no label field"))?.trim();
        let class = labels
            .iter()
            .position(|l| l.eq_ignore_ascii_case(label))
            .or_else(|| label.parse::<usize>().ok().filter(|c| *c < labels.len()))
            .ok_or(format!("row {line}: unknown label {label:?} (this model has {})", labels.join(", ")))?;
        rows.push((text.clone(), class));
    }
    Ok(rows)
}

fn parse_csv(text: &str) -> Result<Vec<Vec<String>>, String> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field).trim_end_matches('\r').to_owned());
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed".into());
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field.trim_end_matches('\r').to_owned());
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_quoted_fields_names_and_indexes() {
        let csv = "id,text,label\r\n1,\"good, \"\"very\"\" good\",positive\n2,bad,0\n\n3,\"two\nlines\",Neutral\n";
        let rows = read_labelled_csv(csv, &["negative", "neutral", "positive"]).unwrap();
        assert_eq!(rows, [("good, \"very\" good".to_owned(), 2), ("bad".to_owned(), 0), ("two\nlines".to_owned(), 1)]);
        assert!(read_labelled_csv("text,label\nx,happy\n", &["negative"]).unwrap_err().contains("unknown label"));
        assert!(read_labelled_csv("text\nx\n", &["negative"]).unwrap_err().contains("`label`"));
        assert!(read_labelled_csv("text,label\n\"open,x\n", &["negative"]).is_err());
    }
}
