//! Why the transformer backend could not load or answer.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BertError {
    #[error("cannot read {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    /// A configuration file of the encoder's folder is missing a field or asks for
    /// something this backend does not run.
    #[error("invalid encoder folder: {0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The tensor library failed (a shape, a missing weight, an allocation).
    #[error("candle: {0}")]
    Candle(String),
    /// ONNX Runtime (its library, the graph, a run) failed.
    #[error("onnx runtime: {0}")]
    Onnx(String),
    /// The head file is not one this build reads.
    #[error("invalid head file {path}: {message}")]
    Head { path: PathBuf, message: String },
    /// The head was trained on other encoder weights: its answers would be meaningless.
    #[error(
        "the encoder weights in {dir} (SHA-256 {found}) are not the ones this head was trained on ({expected}); point MINILM_DIR at those weights (`make fetch-minilm` puts them in .tools/models/all-MiniLM-L6-v2), or train a head for these with `falcon train --backend minilm`"
    )]
    WeightsMismatch { dir: PathBuf, expected: String, found: String },
    #[error(
        "the {0} model needs MINILM_DIR: the folder of the encoder's weights (`make fetch-minilm` puts all-MiniLM-L6-v2 in .tools/models/all-MiniLM-L6-v2)"
    )]
    NoEncoderDir(&'static str),
}
