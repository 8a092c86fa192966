//! The training pipeline: split, fit TF-IDF on the training part, fit the classifier,
//! evaluate on the held-out part.

use crate::dataset::{Dataset, stratified_split};
use crate::error::ModelError;
use crate::eval::evaluate;
use crate::logistic::{LogisticModel, TrainConfig};
use crate::model::{SentimentModel, TrainingInfo};
use crate::tfidf::{TfidfConfig, Vectorizer};
use crate::tokenize::normalize;

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

/// The optimiser's output, before it is stored: full-precision weights and the split.
pub struct Fitted {
    pub vectorizer: Vectorizer,
    pub weights: LogisticModel,
    pub training: TrainingInfo,
    /// Indices of the held-out sentences.
    pub test_idx: Vec<usize>,
}

impl Fitted {
    /// Probabilities from the full-precision (`f64`) weights, as the optimiser left them.
    pub fn predict_proba(&self, text: &str) -> Vec<f64> {
        self.weights.predict_proba(&self.vectorizer.transform(&normalize(text)))
    }
}

/// Splits the data and fits TF-IDF and the classifier on the training part.
pub fn fit(data: &Dataset, opts: &TrainOptions) -> Result<Fitted, ModelError> {
    if data.texts.is_empty() {
        return Err(ModelError::NoData("the data set is empty".into()));
    }
    if data.label_names.len() < 2 {
        return Err(ModelError::NoData(format!("{} label(s); a classifier needs 2 or more", data.label_names.len())));
    }
    let (train_idx, test_idx) = stratified_split(&data.labels, opts.test_fraction, opts.seed);
    let train_docs: Vec<String> = train_idx.iter().map(|&i| normalize(&data.texts[i])).collect();
    let vectorizer = Vectorizer::fit(&train_docs, opts.tfidf);
    let x_train: Vec<_> = train_docs.iter().map(|d| vectorizer.transform(d)).collect();
    let y_train: Vec<usize> = train_idx.iter().map(|&i| data.labels[i]).collect();
    let classes = data.label_names.len();
    let (weights, fit) = LogisticModel::fit(&x_train, &y_train, vectorizer.len(), classes, &opts.optimizer);
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
    Ok(Fitted { vectorizer, weights, training, test_idx })
}

/// Trains a model and evaluates it on the held-out split. Deterministic: the same data and
/// options give the same weights and `model_version`; only `created_at` differs.
pub fn train(data: &Dataset, opts: &TrainOptions) -> Result<SentimentModel, ModelError> {
    let fitted = fit(data, opts)?;
    build(data, &fitted)
}

/// Stores fitted weights as a model and evaluates it, as it will be served (its stored
/// weights, not the optimiser's), on the held-out split.
pub fn build(data: &Dataset, f: &Fitted) -> Result<SentimentModel, ModelError> {
    let names: Vec<&str> = data.label_names.iter().map(String::as_str).collect();
    let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let unevaluated = evaluate(&[], &[], &names);
    let model = SentimentModel::new(
        data.label_names.clone(),
        &f.vectorizer,
        &f.weights,
        f.training.clone(),
        unevaluated,
        created_at,
    )?;
    let y_true: Vec<usize> = f.test_idx.iter().map(|&i| data.labels[i]).collect();
    let y_pred: Vec<usize> = f.test_idx.iter().map(|&i| model.predict(&data.texts[i]).class).collect();
    model.with_metrics(evaluate(&y_true, &y_pred, &names))
}
