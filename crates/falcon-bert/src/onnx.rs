//! The encoder's second runtime: ONNX Runtime (through the `ort` crate), running the graph
//! `scripts/minilm_to_onnx.py` writes from the folder's own safetensors (`model.onnx`).
//!
//! The library is loaded at run time (`ORT_DYLIB_PATH`, else `libonnxruntime.so` in the
//! encoder's folder, where `make fetch-minilm` puts the one from the PyPI `onnxruntime`
//! wheel): nothing is downloaded or linked at build time. The graph carries the SHA-256 of
//! the safetensors it was made from; a graph made from other weights is refused.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;

use crate::error::BertError;

/// The graph file in an encoder's folder.
pub const GRAPH_FILE: &str = "model.onnx";
/// The ONNX Runtime library looked for in an encoder's folder when `ORT_DYLIB_PATH` is unset.
pub const LIBRARY_FILE: &str = "libonnxruntime.so";

/// One ONNX Runtime session over the encoder's graph. ONNX Runtime runs one call at a
/// time per session here (`ort` asks for `&mut`); each call uses `threads` cores.
pub struct OnnxEncoder {
    session: Mutex<Session>,
}

/// Where the ONNX Runtime library is for an encoder in `dir`.
pub fn library_path(dir: &Path) -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()).map_or_else(|| dir.join(LIBRARY_FILE), PathBuf::from)
}

/// Whether `dir` has what the ONNX runtime needs: the graph and the library.
pub fn available(dir: &Path) -> bool {
    dir.join(GRAPH_FILE).is_file() && library_path(dir).is_file()
}

/// The process's ONNX Runtime environment: the library is loaded once, from the first
/// path asked for.
fn environment(library: &Path) -> Result<ort::environment::Environment, BertError> {
    static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        ort::init_from(library)
            .map_err(|e| format!("cannot load the ONNX Runtime library {}: {e}", library.display()))?
            .with_name("falcon")
            // ONNX Runtime's Linux build carries Microsoft's telemetry SDK; a worker sends
            // nothing anywhere (and it must not leave a session file in TMPDIR).
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(BertError::Onnx)
}

impl OnnxEncoder {
    /// Loads `dir`'s graph, checking that it was made from the weights whose SHA-256 is
    /// `weights_sha256`; each forward pass uses `threads` threads.
    pub fn load(dir: &Path, weights_sha256: &str, threads: usize) -> Result<Self, BertError> {
        let graph = dir.join(GRAPH_FILE);
        if !graph.is_file() {
            return Err(BertError::Onnx(format!(
                "no {} in {}: make it with scripts/minilm_to_onnx.py (`make fetch-minilm` does), or set MINILM_RUNTIME=candle",
                GRAPH_FILE,
                dir.display()
            )));
        }
        let env = environment(&library_path(dir))?;
        let onnx = |e: ort::Error| BertError::Onnx(format!("{}: {e}", graph.display()));
        let session = Session::builder(&env)
            .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::All).map_err(Into::into))
            .and_then(|b| b.with_intra_threads(threads.max(1)).map_err(Into::into))
            .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
            .and_then(|b| b.with_log_level(ort::logging::LogLevel::Error).map_err(Into::into))
            .and_then(|mut b| b.commit_from_file(&graph))
            .map_err(onnx)?;
        let made_from = session.metadata().ok().and_then(|m| m.custom("safetensors_sha256"));
        if made_from.as_deref() != Some(weights_sha256) {
            return Err(BertError::Onnx(format!(
                "{} was made from other weights ({}) than the folder's model.safetensors ({weights_sha256}); make it again with scripts/minilm_to_onnx.py",
                graph.display(),
                made_from.as_deref().unwrap_or("not recorded")
            )));
        }
        Ok(Self { session: Mutex::new(session) })
    }

    /// The last hidden state of a padded batch: `rows × len × dim` values, row-major.
    pub fn hidden_states(&self, ids: Vec<i64>, mask: Vec<i64>, rows: usize, len: usize) -> Result<Vec<f32>, BertError> {
        let onnx = |e: ort::Error| BertError::Onnx(e.to_string());
        let ids = Tensor::from_array(([rows, len], ids)).map_err(onnx)?;
        let mask = Tensor::from_array(([rows, len], mask)).map_err(onnx)?;
        let mut session = self.session.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let outputs = session.run(ort::inputs!["input_ids" => ids, "attention_mask" => mask]).map_err(onnx)?;
        let hidden = outputs
            .get("last_hidden_state")
            .ok_or_else(|| BertError::Onnx("the graph has no last_hidden_state output".into()))?;
        let (_, values) = hidden.try_extract_tensor::<f32>().map_err(onnx)?;
        Ok(values.to_vec())
    }
}
