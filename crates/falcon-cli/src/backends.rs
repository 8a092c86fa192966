//! The one place that turns `MODEL_BACKEND` into a model: `falcon serve` and `falcon
//! predict` both load through `load`. The worker knows only `falcon_backend::Backend`; a
//! new model is a new crate implementing it plus one arm below.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

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
    #[error(
        "cannot load the model (set MODEL_PATH to a model file made by `falcon train`, or unset it for the built-in model): {0}"
    )]
    Model(#[from] falcon_model::ModelError),
}

/// Loads the model `name` selects: from `path`, or the one compiled into the binary.
pub fn load(name: &str, path: Option<&Path>) -> Result<LoadedBackend, LoadError> {
    let started = Instant::now();
    let (backend, source): (Arc<dyn Backend>, String) = match name {
        "tfidf" => match path {
            Some(p) => (Arc::new(SentimentModel::load(p)?), p.display().to_string()),
            None => (Arc::new(SentimentModel::shipped()?), "built-in".to_owned()),
        },
        other => return Err(LoadError::UnknownBackend(other.to_owned())),
    };
    Ok(LoadedBackend { backend, source, load_time: started.elapsed() })
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
}
