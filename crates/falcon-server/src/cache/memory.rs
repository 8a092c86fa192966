//! The embedded in-process cache: bounded, with a time-to-live, no setup.

use std::sync::Arc;
use std::time::Duration;

use falcon_model::Prediction;

use super::{BoxFuture, ResponseCache};

/// An in-process TTL cache (moka), bounded in entries.
#[derive(Clone)]
pub struct MemoryCache {
    inner: moka::future::Cache<String, Arc<Prediction>>,
}

impl MemoryCache {
    pub fn new(max_entries: u64, ttl: Duration) -> Self {
        Self { inner: moka::future::Cache::builder().max_capacity(max_entries).time_to_live(ttl).build() }
    }
}

impl ResponseCache for MemoryCache {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Arc<Prediction>>> {
        Box::pin(self.inner.get(key))
    }

    fn put(&self, key: String, value: Arc<Prediction>) -> BoxFuture<'_, ()> {
        Box::pin(self.inner.insert(key, value))
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Arc<Prediction> {
        Arc::new(Prediction { class: 2, confidence: 0.9, probabilities: vec![0.05, 0.05, 0.9] })
    }

    #[tokio::test]
    async fn stores_and_returns_entries() {
        let c = MemoryCache::new(10, Duration::from_secs(60));
        assert!(c.get("k").await.is_none());
        c.put("k".into(), p()).await;
        assert_eq!(c.get("k").await.unwrap().class, 2);
    }

    #[tokio::test]
    async fn entries_expire_after_ttl() {
        let c = MemoryCache::new(10, Duration::from_millis(50));
        c.put("k".into(), p()).await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(c.get("k").await.is_none());
    }
}
