//! The response cache: prediction by `cache:<sha256(model version, normalised text)>`.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use falcon_backend::Prediction;
use sha2::{Digest, Sha256};

pub use memory::MemoryCache;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A store of predictions. Failures never reach the caller: a cache that cannot answer
/// behaves as a miss, and a failed write is dropped (the adapter counts and logs it).
pub trait ResponseCache: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Arc<Prediction>>>;
    fn put(&self, key: String, value: Arc<Prediction>) -> BoxFuture<'_, ()>;
    /// Short name for `/readyz` and logs (`memory`, `redis`).
    fn backend(&self) -> &'static str;
}

/// The cache key of a text under a model version. The version is part of the key, so a
/// new model never serves an old model's answers.
pub fn cache_key(model_version: &str, normalized_text: &str) -> String {
    let mut h = Sha256::new();
    h.update(model_version.as_bytes());
    h.update([0u8]);
    h.update(normalized_text.as_bytes());
    format!("cache:{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_model_version_and_text() {
        let a = cache_key("v1", "great movie");
        assert!(a.starts_with("cache:") && a.len() == 6 + 64);
        assert_eq!(a, cache_key("v1", "great movie"));
        assert_ne!(a, cache_key("v2", "great movie"));
        assert_ne!(a, cache_key("v1", "great movies"));
        // The separator keeps (version, text) pairs from colliding when concatenated.
        assert_ne!(cache_key("v1a", "b"), cache_key("v1", "ab"));
    }
}
