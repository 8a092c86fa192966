//! The embedded in-process cache: bounded, with a time-to-live, no setup.
//!
//! Every entry lives for the same TTL, so insertion order is also expiry order: one FIFO
//! per shard serves both expiry and eviction in O(1). Measured against moka 0.12's
//! `future::Cache` in the HTTP benchmark, the unique-text (miss + insert) path went from
//! 0.40× to about 0.5× of /healthz (with mimalloc); see docs/benchmarks.md.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use falcon_backend::Prediction;
use hashbrown::HashTable;

use super::{BoxFuture, ResponseCache};

const SHARDS: usize = 16;

struct Entry {
    key: Arc<str>,
    /// The key's hash: what the table rehashes with when it grows, and what its FIFO slot
    /// finds it by.
    hash: u64,
    value: Arc<Prediction>,
    expires: Instant,
    /// Which insertion this is: unique in its shard, so a FIFO slot finds exactly the entry
    /// it was made for, and a stale slot (its key re-inserted since) finds nothing.
    seq: u64,
}

/// One shard: its entries, and a FIFO of (insertion, hash) slots in insertion order. The key
/// is hashed once per operation; every other look-up goes by a stored hash and a sequence
/// number.
#[derive(Default)]
struct Shard {
    map: HashTable<Entry>,
    fifo: VecDeque<(u64, u64)>,
    next_seq: u64,
}

impl Shard {
    /// Drops the oldest slot; removes its entry if the slot is still the current one.
    fn pop_oldest(&mut self) {
        if let Some((seq, hash)) = self.fifo.pop_front()
            && let Ok(entry) = self.map.find_entry(hash, |e| e.seq == seq)
        {
            entry.remove();
        }
    }

    /// Whether the oldest slot is stale (its entry replaced or gone) or its entry expired.
    fn oldest_is_dead(&self, now: Instant) -> bool {
        self.fifo
            .front()
            .is_some_and(|&(seq, hash)| self.map.find(hash, |e| e.seq == seq).is_none_or(|e| e.expires <= now))
    }
}

/// An in-process TTL cache, bounded in entries, sharded to keep lock hold times short.
pub struct MemoryCache {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    per_shard: usize,
    ttl: Duration,
}

impl MemoryCache {
    pub fn new(max_entries: u64, ttl: Duration) -> Self {
        let per_shard = (max_entries as usize).div_ceil(SHARDS).max(1);
        Self { shards: (0..SHARDS).map(|_| Mutex::default()).collect(), hasher: RandomState::new(), per_shard, ttl }
    }

    /// The key's hash and its shard. The shard is picked by bits the table does not use
    /// for a bucket (its low bits) or a tag (its top seven).
    fn shard(&self, key: &str) -> (u64, &Mutex<Shard>) {
        let hash = self.hasher.hash_one(key);
        (hash, &self.shards[(hash >> 32) as usize % SHARDS])
    }

    /// Returns the live entry for `key`, if any.
    pub fn get_now(&self, key: &str, now: Instant) -> Option<Arc<Prediction>> {
        let (hash, shard) = self.shard(key);
        let shard = shard.lock().ok()?;
        shard.map.find(hash, |e| &*e.key == key).filter(|e| e.expires > now).map(|e| Arc::clone(&e.value))
    }

    /// Stores `value` under `key` for the TTL, evicting expired and then oldest entries.
    pub fn put_now(&self, key: &str, value: Arc<Prediction>, now: Instant) {
        let (hash, shard) = self.shard(key);
        let Ok(mut shard) = shard.lock() else { return };
        while shard.oldest_is_dead(now) {
            shard.pop_oldest();
        }
        let seq = shard.next_seq;
        shard.next_seq += 1;
        let expires = now + self.ttl;
        if let Some(entry) = shard.map.find_mut(hash, |e| &*e.key == key) {
            // Re-inserted: the entry takes the new value and slot; its old slot goes stale.
            entry.value = value;
            entry.expires = expires;
            entry.seq = seq;
        } else {
            while shard.map.len() >= self.per_shard && !shard.fifo.is_empty() {
                shard.pop_oldest();
            }
            shard.map.insert_unique(hash, Entry { key: Arc::from(key), hash, value, expires, seq }, |e| e.hash);
        }
        shard.fifo.push_back((seq, hash));
        // A key re-inserted many times leaves stale slots; keep the FIFO bounded too.
        if shard.fifo.len() > 2 * self.per_shard {
            shard.pop_oldest();
        }
    }

    /// Live entries (expired ones not yet swept are counted).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map_or(0, |s| s.map.len())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ResponseCache for MemoryCache {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Arc<Prediction>>> {
        Box::pin(std::future::ready(self.get_now(key, Instant::now())))
    }

    fn put(&self, key: String, value: Arc<Prediction>) -> BoxFuture<'_, ()> {
        self.put_now(&key, value, Instant::now());
        Box::pin(std::future::ready(()))
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(class: usize) -> Arc<Prediction> {
        Arc::new(Prediction { class, confidence: 0.9, probabilities: vec![0.05, 0.05, 0.9] })
    }

    #[tokio::test]
    async fn stores_and_returns_entries() {
        let c = MemoryCache::new(10, Duration::from_secs(60));
        assert!(c.get("k").await.is_none());
        c.put("k".into(), p(2)).await;
        assert_eq!(c.get("k").await.unwrap().class, 2);
    }

    #[test]
    fn entries_expire_after_ttl() {
        let c = MemoryCache::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        c.put_now("k", p(1), t0);
        assert!(c.get_now("k", t0 + Duration::from_secs(59)).is_some());
        assert!(c.get_now("k", t0 + Duration::from_secs(60)).is_none());
    }

    #[test]
    fn expired_entries_are_swept_on_insert() {
        let c = MemoryCache::new(1000, Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..100 {
            c.put_now(&format!("old{i}"), p(0), t0);
        }
        // 2000 inserts reach every one of the 16 shards (a miss has odds ~16·(15/16)^2000).
        let c = MemoryCache { per_shard: 10_000, ..c };
        for i in 0..2000 {
            c.put_now(&format!("new{i}"), p(0), t0 + Duration::from_secs(2));
        }
        assert_eq!(c.len(), 2000, "every expired entry is gone once its shard sees an insert");
    }

    #[test]
    fn size_is_bounded_and_the_oldest_go_first() {
        let c = MemoryCache::new(160, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..10_000 {
            c.put_now(&format!("k{i}"), p(0), t0);
        }
        assert!(c.len() <= 160, "{}", c.len());
        assert!(c.get_now("k9999", t0).is_some());
        assert!(c.get_now("k0", t0).is_none());
    }

    #[test]
    fn reinserting_a_key_keeps_one_entry_and_the_newest_value() {
        // Room for 64 entries a shard: nothing below is evicted for size.
        let c = MemoryCache::new(64 * SHARDS as u64, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..1000 {
            c.put_now("same", p(i % 3), t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(c.len(), 1);
        assert_eq!(c.get_now("same", t0 + Duration::from_secs(1)).unwrap().class, 999 % 3);
        // "same" left 999 stale slots at the front of its shard's FIFO; trimming them (the
        // FIFO is bounded at twice the shard) must never evict the live entry they name.
        for i in 0..200 {
            c.put_now(&format!("other{i}"), p(0), t0 + Duration::from_secs(1));
        }
        assert_eq!(c.get_now("same", t0 + Duration::from_secs(1)).unwrap().class, 999 % 3);
        assert_eq!(c.len(), 201);
    }
}
