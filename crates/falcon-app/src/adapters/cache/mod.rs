//! The response cache: prediction by `cache:<HMAC-SHA256(model version, normalised text)>`
//! (`TextKey::cache_key`).

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use falcon_backend::Prediction;

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
