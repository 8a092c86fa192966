//! The one place that turns `MODEL_BACKEND` into a model: `falcon serve` and `falcon
//! predict` both load through `load`. The worker knows only `falcon_backend::Backend`; a
//! new model is a new crate implementing it plus one arm below.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Instant, SystemTime};

use falcon_app::models::{ModelLoader, ModelSpec, Repository, RepositoryError};
use falcon_backend::Backend;
use falcon_bert::{BertError, Encoder, Head, Runtime, SentenceClassifier};
use falcon_model::SentimentModel;
use falcon_server::LoadedBackend;

/// Every `MODEL_BACKEND` this build knows.
pub const NAMES: [&str; 2] = ["tfidf", "minilm"];

/// The environment variable naming the MiniLM encoder's folder.
pub const MINILM_DIR: &str = "MINILM_DIR";
/// Which runtime runs it: `candle`, `onnx`, or `auto` (the default: ONNX Runtime when the
/// folder has its graph and library, as `make fetch-minilm` leaves it).
pub const MINILM_RUNTIME: &str = "MINILM_RUNTIME";
/// Threads one ONNX Runtime forward pass uses [default: one per core]; candle's are
/// `RAYON_NUM_THREADS`.
pub const MINILM_THREADS: &str = "MINILM_THREADS";

/// Why no model could be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("unknown MODEL_BACKEND {0:?}; this build has: {names}", names = NAMES.join(", "))]
    UnknownBackend(String),
    /// The backend could not load its model; its own error says why.
    #[error(
        "cannot load the {backend} model (set MODEL_PATH to a model file made by `falcon train`, or unset it for the built-in model): {source}"
    )]
    Model { backend: &'static str, source: Box<dyn std::error::Error + Send + Sync> },
    /// The transformer backend could not load its encoder or head; its error says which
    /// and what to set.
    #[error("cannot load the minilm model: {0}")]
    Minilm(#[from] BertError),
}

impl LoadError {
    fn model(backend: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Model { backend, source: Box::new(e) }
    }
}

/// Loads the model `name` selects: from `path`, or the one compiled into the binary.
///
/// For `minilm`, `path` is a head file (`falcon train --backend minilm`) read with the
/// encoder in `MINILM_DIR`, or the encoder's folder itself (a repository's `dir`), read
/// with the head in its `falcon-head.json` when there is one; the built-in head otherwise.
pub fn load(name: &str, path: Option<&Path>) -> Result<LoadedBackend, LoadError> {
    let started = Instant::now();
    let (backend, source): (Arc<dyn Backend>, String) = match name {
        "tfidf" => {
            let model = match path {
                Some(p) => SentimentModel::load(p),
                None => SentimentModel::shipped(),
            };
            let source = path.map_or_else(|| "built-in".to_owned(), |p| p.display().to_string());
            (Arc::new(model.map_err(|e| LoadError::model("tfidf", e))?), source)
        }
        "minilm" => load_minilm(path)?,
        other => return Err(LoadError::UnknownBackend(other.to_owned())),
    };
    Ok(LoadedBackend { backend, source, load_time: started.elapsed() })
}

/// The head file an encoder folder may carry (else the built-in head serves it).
pub const HEAD_IN_DIR: &str = "falcon-head.json";

fn load_minilm(path: Option<&Path>) -> Result<(Arc<dyn Backend>, String), LoadError> {
    let env_dir = || std::env::var_os(MINILM_DIR).filter(|d| !d.is_empty()).map(PathBuf::from);
    let (dir, head_file) = match path {
        Some(p) if p.is_dir() => (p.to_owned(), Some(p.join(HEAD_IN_DIR)).filter(|h| h.is_file())),
        Some(p) => (env_dir().ok_or(BertError::NoEncoderDir(falcon_bert::NAME))?, Some(p.to_owned())),
        None => (env_dir().ok_or(BertError::NoEncoderDir(falcon_bert::NAME))?, None),
    };
    let head = match &head_file {
        Some(file) => Head::load(file)?,
        None => falcon_bert::shipped_head()?,
    };
    let runtime = Runtime::choose(std::env::var(MINILM_RUNTIME).ok().as_deref(), &dir)?;
    let model = SentenceClassifier::new(shared_encoder(&dir, runtime)?, head)?;
    let encoder = format!("encoder {}, runtime {}", dir.display(), runtime.name());
    let source = match head_file {
        Some(file) => format!("{} ({encoder})", file.display()),
        None => format!("built-in head ({encoder})"),
    };
    Ok((Arc::new(model), source))
}

/// Encoders already loaded, by folder: a hot reload of a head, a second model or a shadow
/// on the same weights shares them (90 MB for all-MiniLM-L6-v2) instead of reading them
/// again. An entry lives as long as a model uses it, and a changed weights file (size or
/// modification time) is read anew.
fn shared_encoder(dir: &Path, runtime: Runtime) -> Result<Arc<Encoder>, BertError> {
    type Stamp = (u64, Option<SystemTime>, Runtime);
    static LOADED: Mutex<Vec<(PathBuf, Stamp, Weak<Encoder>)>> = Mutex::new(Vec::new());
    let weights = dir.join("model.safetensors");
    let meta = std::fs::metadata(&weights).map_err(|error| BertError::Io { path: weights.clone(), error })?;
    let stamp: Stamp = (meta.len(), meta.modified().ok(), runtime);
    let mut loaded = LOADED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loaded.retain(|(_, _, e)| e.strong_count() > 0);
    if let Some(encoder) = loaded.iter().find(|(d, s, _)| d == dir && *s == stamp).and_then(|(_, _, e)| e.upgrade()) {
        return Ok(encoder);
    }
    let threads = std::env::var(MINILM_THREADS)
        .ok()
        .and_then(|t| t.trim().parse::<usize>().ok())
        .filter(|&t| t > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    let encoder = Arc::new(Encoder::load_with(dir, runtime, &candle_core::Device::Cpu, threads)?);
    loaded.push((dir.to_owned(), stamp, Arc::downgrade(&encoder)));
    Ok(encoder)
}

/// The repository a worker serves: the file (`MODEL_REPOSITORY`), checked against this
/// build's backends, or one model named `sentiment` from `backend` and `path`.
pub fn repository(file: Option<&Path>, backend: &str, path: Option<&Path>) -> Result<Repository, RepositoryError> {
    match file {
        Some(file) => Repository::read(file, &NAMES),
        None => Ok(Repository::single(backend, path)),
    }
}

/// Loads one model of a repository.
pub fn load_spec(spec: &ModelSpec) -> Result<LoadedBackend, LoadError> {
    load(&spec.backend, spec.location.as_deref())
}

/// The worker's loader: hot reload and the repository's load go through it.
pub fn loader() -> ModelLoader {
    Arc::new(|spec: &ModelSpec| load_spec(spec).map_err(|e| format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_loads_and_others_are_refused() {
        assert_eq!(NAMES, ["tfidf", "minilm"]);
        let m = load("tfidf", None).unwrap();
        assert_eq!((m.backend.name(), m.source.as_str()), ("tfidf", "built-in"));
        // minilm from its encoder's folder (a repository's `dir`), with the built-in head
        // (`make fetch-minilm` puts the weights there; make test runs it).
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/models/all-MiniLM-L6-v2");
        let m = load("minilm", Some(&dir)).unwrap();
        assert_eq!(m.backend.name(), "minilm");
        assert!(m.source.starts_with("built-in head (encoder "), "{}", m.source);
        // A folder without an encoder names what it lacks.
        let empty = std::env::temp_dir().join(format!("falcon-minilm-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let e = load("minilm", Some(&empty)).err().unwrap().to_string();
        std::fs::remove_dir(&empty).unwrap();
        assert!(e.starts_with("cannot load the minilm model") && e.contains("model.safetensors"), "{e}");
        assert!(matches!(load("onnx", None), Err(LoadError::UnknownBackend(_))));
    }

    #[test]
    fn a_model_that_does_not_load_names_its_backend_and_the_cause() {
        let dir = std::env::temp_dir().join(format!("falcon-load-{}", std::process::id()));
        std::fs::write(&dir, b"not a model").unwrap();
        let e = load("tfidf", Some(&dir)).err().unwrap().to_string();
        std::fs::remove_file(&dir).unwrap();
        assert!(e.starts_with("cannot load the tfidf model"), "{e}");
        assert!(std::error::Error::source(&load("tfidf", Some(&dir)).err().unwrap()).is_some());
    }
}
