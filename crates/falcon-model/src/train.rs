//! The training pipeline: split, fit TF-IDF on the training part, fit the classifier,
//! evaluate on the held-out part.

use crate::dataset::{Dataset, LABELS, stratified_split};
use crate::error::ModelError;
use crate::eval::{Evaluation, evaluate};
use crate::logistic::{LogisticModel, TrainConfig};
use crate::model::{SentimentModel, TrainingInfo};
use crate::tfidf::{TfidfConfig, Vectorizer};
use crate::tokenize::tokenize;

/// Everything that decides the trained weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainOptions {
    pub seed: u64,
    pub test_fraction: f64,
    pub tfidf: TfidfConfig,
    pub optimizer: TrainConfig,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self { seed: 42, test_fraction: 0.2, tfidf: TfidfConfig::default(), optimizer: TrainConfig::default() }
    }
}

/// Trains a model and evaluates it on the held-out split. Deterministic: the same data and
/// options give the same weights and `model_version`; only `created_at` differs.
pub fn train(data: &Dataset, opts: &TrainOptions) -> Result<SentimentModel, ModelError> {
    if data.texts.is_empty() {
        return Err(ModelError::NoData("the data set is empty".into()));
    }
    let (train_idx, test_idx) = stratified_split(&data.labels, opts.test_fraction, opts.seed);
    let tokens: Vec<Vec<String>> = data.texts.iter().map(|t| tokenize(t)).collect();
    let train_docs: Vec<Vec<String>> = train_idx.iter().map(|&i| tokens[i].clone()).collect();
    let vectorizer = Vectorizer::fit(&train_docs, opts.tfidf);
    let x_train: Vec<_> = train_docs.iter().map(|d| vectorizer.transform(d)).collect();
    let y_train: Vec<usize> = train_idx.iter().map(|&i| data.labels[i]).collect();
    let (weights, fit) = LogisticModel::fit(&x_train, &y_train, vectorizer.len(), LABELS.len(), &opts.optimizer);

    let metrics = evaluate_on(&vectorizer, &weights, &tokens, &data.labels, &test_idx);
    let training = TrainingInfo {
        data_sha256: data.sha256.clone(),
        n_samples: data.texts.len(),
        n_train: train_idx.len(),
        n_test: test_idx.len(),
        seed: opts.seed,
        test_fraction: opts.test_fraction,
        tfidf: opts.tfidf,
        optimizer: opts.optimizer,
        fit,
    };
    let labels = LABELS.iter().map(|s| (*s).to_owned()).collect();
    let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Ok(SentimentModel::new(labels, vectorizer, weights, training, metrics, created_at))
}

fn evaluate_on(
    v: &Vectorizer,
    w: &LogisticModel,
    tokens: &[Vec<String>],
    labels: &[usize],
    idx: &[usize],
) -> Evaluation {
    let y_true: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
    let y_pred: Vec<usize> = idx
        .iter()
        .map(|&i| {
            let p = w.predict_proba(&v.transform(&tokens[i]));
            (0..p.len()).fold(0, |b, k| if p[k] > p[b] { k } else { b })
        })
        .collect();
    evaluate(&y_true, &y_pred, &LABELS)
}
