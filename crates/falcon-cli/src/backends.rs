//! The one place that turns `MODEL_BACKEND` into a model: `falcon serve` and `falcon
//! predict` both load through `load`. The worker knows only `falcon_backend::Backend`; a
//! new model is a new crate implementing it plus one arm below.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use falcon_app::models::{ModelLoader, ModelSpec, Repository, RepositoryError};
use falcon_backend::Backend;
use falcon_model::SentimentModel;
use falcon_server::LoadedBackend;

/// Every `MODEL_BACKEND` this build knows.
pub const NAMES: [&str; 1] = ["tfidf"];

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
}

impl LoadError {
    fn model(backend: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Model { backend, source: Box::new(e) }
    }
}

/// Loads the model `name` selects: from `path`, or the one compiled into the binary.
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
        other => return Err(LoadError::UnknownBackend(other.to_owned())),
    };
    Ok(LoadedBackend { backend, source, load_time: started.elapsed() })
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
    fn every_name_loads_its_built_in_model_and_others_are_refused() {
        for name in NAMES {
            let m = load(name, None).unwrap();
            assert_eq!(m.backend.name(), name);
            assert_eq!(m.source, "built-in");
        }
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
