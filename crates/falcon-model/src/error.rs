use std::path::PathBuf;

/// Everything that can go wrong reading data or a model file, or training.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Data { path: PathBuf, line: usize, message: String },
    #[error("no training data: {0}")]
    NoData(String),
    #[error("model file {path} is not a valid Falcon model: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("model file {path} has format version {found}; this build reads version {supported}")]
    Incompatible { path: PathBuf, found: u32, supported: u32 },
    #[error(
        "model file {path} failed its integrity check: content hash {actual} does not match model_version {expected}"
    )]
    Integrity { path: PathBuf, expected: String, actual: String },
}
