//! `X-Idempotency-Key`: the first request with a key stores its response; repeats replay
//! it; the same key with a different body is a conflict; concurrent requests with one key
//! run the model once. In-process without Redis; across workers with it.
//!
//! Across workers the claim is a Redis lock, `SET idempotency-lock:<key> <fingerprint> NX PX`,
//! so exactly one request computes. The others poll `idempotency:<key>` until the response is
//! there. If the lock expires or is released without a response (the owner failed), the
//! next poll claims it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::counter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::api::InferResponse;
use crate::cache::redis::{RedisStore, record_fallback};
use crate::telemetry::metrics::{IDEMPOTENCY_HITS, IDEMPOTENCY_MISSES};

/// What identifies "the same request": a hash of the exact text.
pub fn fingerprint(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A stored answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub fingerprint: String,
    pub response: InferResponse,
}

/// The outcome of claiming a key.
#[derive(Debug)]
pub enum Claim {
    /// First request with this key: compute, then `complete` or `release`.
    Fresh,
    /// Answered before: replay this.
    Replay(InferResponse),
    /// The key was used with a different body.
    Conflict,
    /// The store cannot answer (Redis down): compute without idempotency.
    Unavailable,
}

enum Slot {
    InFlight { fingerprint: String, done: Arc<Notify> },
    Done { record: Record, expires: Instant },
}

/// Where records live: in this process, or in Redis (shared by every worker).
pub struct IdempotencyStore(Backend);

enum Backend {
    Memory { slots: Mutex<HashMap<String, Slot>>, ttl: Duration, max_entries: usize },
    Redis { store: Arc<RedisStore>, ttl: Duration, lock_ttl: Duration },
}

const POLL: Duration = Duration::from_millis(10);

impl IdempotencyStore {
    pub fn memory(ttl: Duration, max_entries: usize) -> Self {
        Self(Backend::Memory { slots: Mutex::new(HashMap::new()), ttl, max_entries })
    }

    /// `lock_ttl` bounds how long a crashed owner can hold a key.
    pub fn redis(store: Arc<RedisStore>, ttl: Duration, lock_ttl: Duration) -> Self {
        Self(Backend::Redis { store, ttl, lock_ttl })
    }

    /// `memory` or `redis`.
    pub fn backend(&self) -> &'static str {
        match self.0 {
            Backend::Memory { .. } => "memory",
            Backend::Redis { .. } => "redis",
        }
    }

    /// Claims `key` for a request with this fingerprint, waiting up to `wait` for a
    /// concurrent owner to finish.
    pub async fn claim(&self, key: &str, fp: &str, wait: Duration) -> Claim {
        let deadline = Instant::now() + wait;
        let claim = match &self.0 {
            Backend::Memory { slots, max_entries, .. } => claim_memory(slots, *max_entries, key, fp, deadline).await,
            Backend::Redis { store, lock_ttl, .. } => claim_redis(store, *lock_ttl, key, fp, deadline).await,
        };
        match &claim {
            Claim::Replay(_) => counter!(IDEMPOTENCY_HITS).increment(1),
            Claim::Fresh => counter!(IDEMPOTENCY_MISSES).increment(1),
            Claim::Unavailable => record_fallback("idempotency_bypass"),
            Claim::Conflict => {}
        }
        claim
    }

    /// Stores the response of a `Fresh` claim.
    pub async fn complete(&self, key: &str, record: Record) {
        match &self.0 {
            Backend::Memory { slots, ttl, .. } => {
                let Ok(mut slots) = slots.lock() else { return };
                let expires = Instant::now() + *ttl;
                if let Some(Slot::InFlight { done, .. }) = slots.insert(key.to_owned(), Slot::Done { record, expires })
                {
                    done.notify_waiters();
                }
            }
            Backend::Redis { store, ttl, .. } => {
                let Ok(json) = serde_json::to_string(&record) else { return };
                let set =
                    redis::cmd("SET").arg(record_key(key)).arg(json).arg("EX").arg(ttl.as_secs().max(1)).to_owned();
                if store.call::<()>("idempotency_set", &set).await.is_err() {
                    record_fallback("idempotency_bypass");
                }
                let _ = store.call::<()>("idempotency_unlock", redis::cmd("DEL").arg(lock_key(key))).await;
            }
        }
    }

    /// Gives up a `Fresh` claim without a response (the request failed), so a retry computes.
    pub async fn release(&self, key: &str) {
        match &self.0 {
            Backend::Memory { slots, .. } => {
                let Ok(mut slots) = slots.lock() else { return };
                if matches!(slots.get(key), Some(Slot::InFlight { .. }))
                    && let Some(Slot::InFlight { done, .. }) = slots.remove(key)
                {
                    done.notify_waiters();
                }
            }
            Backend::Redis { store, .. } => {
                let _ = store.call::<()>("idempotency_unlock", redis::cmd("DEL").arg(lock_key(key))).await;
            }
        }
    }
}

fn record_key(key: &str) -> String {
    format!("idempotency:{key}")
}

/// Locks live under their own prefix: no client key can name another key's lock (with
/// `idempotency:<key>:lock`, the key `K:lock` stored its record on the lock of `K`).
fn lock_key(key: &str) -> String {
    format!("idempotency-lock:{key}")
}

async fn claim_memory(
    slots: &Mutex<HashMap<String, Slot>>,
    max_entries: usize,
    key: &str,
    fp: &str,
    deadline: Instant,
) -> Claim {
    loop {
        let waiter = {
            let Ok(mut map) = slots.lock() else { return Claim::Unavailable };
            let now = Instant::now();
            match map.get(key) {
                Some(Slot::Done { record, expires }) if *expires > now => {
                    return if record.fingerprint == fp {
                        Claim::Replay(record.response.clone())
                    } else {
                        Claim::Conflict
                    };
                }
                Some(Slot::InFlight { fingerprint, done }) => {
                    if fingerprint != fp {
                        return Claim::Conflict;
                    }
                    Arc::clone(done)
                }
                _ => {
                    if map.len() >= max_entries {
                        map.retain(|_, s| !matches!(s, Slot::Done { expires, .. } if *expires <= now));
                    }
                    if map.len() >= max_entries {
                        tracing::warn!(max_entries, "Idempotency store full; request served without idempotency");
                        return Claim::Unavailable;
                    }
                    map.insert(
                        key.to_owned(),
                        Slot::InFlight { fingerprint: fp.to_owned(), done: Arc::new(Notify::new()) },
                    );
                    return Claim::Fresh;
                }
            }
        };
        // Wait for the owner, but never past the deadline; re-check either way (a
        // notification may come between the unlock above and this wait).
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Claim::Unavailable;
        }
        let _ = tokio::time::timeout(remaining.min(Duration::from_millis(50)), waiter.notified()).await;
    }
}

/// The stored record's verdict for this fingerprint, if there is a record.
async fn stored(store: &RedisStore, key: &str, fp: &str) -> Result<Option<Claim>, ()> {
    match store.call::<Option<String>>("idempotency_get", redis::cmd("GET").arg(record_key(key))).await {
        Ok(Some(json)) => Ok(Some(match serde_json::from_str::<Record>(&json) {
            Ok(r) if r.fingerprint == fp => Claim::Replay(r.response),
            Ok(_) => Claim::Conflict,
            Err(e) => {
                tracing::warn!(key, error = %e, "Unreadable idempotency record; serving without idempotency");
                Claim::Unavailable
            }
        })),
        Ok(None) => Ok(None),
        Err(_) => Err(()),
    }
}

async fn claim_redis(store: &RedisStore, lock_ttl: Duration, key: &str, fp: &str, deadline: Instant) -> Claim {
    loop {
        match stored(store, key, fp).await {
            Ok(Some(verdict)) => return verdict,
            Ok(None) => {}
            Err(()) => return Claim::Unavailable,
        }
        let lock = redis::cmd("SET")
            .arg(lock_key(key))
            .arg(fp)
            .arg("NX")
            .arg("PX")
            .arg(lock_ttl.as_millis() as u64)
            .to_owned();
        match store.call::<Option<String>>("idempotency_lock", &lock).await {
            Ok(Some(_)) => {
                // The previous owner may have stored its record and unlocked between our GET
                // and our SET NX. It writes the record before unlocking, so look once more.
                return match stored(store, key, fp).await {
                    Ok(None) => Claim::Fresh,
                    Ok(Some(verdict)) => {
                        let _ = store.call::<()>("idempotency_unlock", redis::cmd("DEL").arg(lock_key(key))).await;
                        verdict
                    }
                    Err(()) => Claim::Unavailable,
                };
            }
            Ok(None) => {
                // Someone else is computing; a different body under the same key conflicts now.
                if let Ok(Some(owner)) =
                    store.call::<Option<String>>("idempotency_get", redis::cmd("GET").arg(lock_key(key))).await
                    && owner != fp
                {
                    return Claim::Conflict;
                }
            }
            Err(_) => return Claim::Unavailable,
        }
        if Instant::now() + POLL > deadline {
            return Claim::Unavailable;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn response(prediction: &str) -> InferResponse {
        InferResponse {
            prediction: prediction.into(),
            confidence: 0.9,
            probabilities: BTreeMap::new(),
            cache_hit: false,
            idempotency_hit: false,
            worker_id: "w".into(),
            model_version: "v".into(),
            processing_time_ms: 1.0,
            request_id: "r".into(),
        }
    }

    #[tokio::test]
    async fn memory_store_replays_and_detects_conflicts() {
        let s = IdempotencyStore::memory(Duration::from_secs(60), 100);
        assert!(matches!(s.claim("k", "fp1", Duration::from_secs(1)).await, Claim::Fresh));
        s.complete("k", Record { fingerprint: "fp1".into(), response: response("positive") }).await;
        match s.claim("k", "fp1", Duration::from_secs(1)).await {
            Claim::Replay(r) => assert_eq!(r.prediction, "positive"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(s.claim("k", "fp2", Duration::from_secs(1)).await, Claim::Conflict));
    }

    #[tokio::test]
    async fn concurrent_claims_compute_once_and_waiters_replay() {
        let s = Arc::new(IdempotencyStore::memory(Duration::from_secs(60), 100));
        assert!(matches!(s.claim("k", "fp", Duration::from_secs(1)).await, Claim::Fresh));
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let s = Arc::clone(&s);
                tokio::spawn(async move { s.claim("k", "fp", Duration::from_secs(5)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.complete("k", Record { fingerprint: "fp".into(), response: response("negative") }).await;
        for w in waiters {
            assert!(matches!(w.await.unwrap(), Claim::Replay(r) if r.prediction == "negative"));
        }
    }

    #[tokio::test]
    async fn a_released_claim_lets_the_next_request_compute() {
        let s = IdempotencyStore::memory(Duration::from_secs(60), 100);
        assert!(matches!(s.claim("k", "fp", Duration::from_secs(1)).await, Claim::Fresh));
        s.release("k").await;
        assert!(matches!(s.claim("k", "fp", Duration::from_secs(1)).await, Claim::Fresh));
    }

    #[tokio::test(start_paused = true)]
    async fn records_expire_after_the_ttl() {
        let s = IdempotencyStore::memory(Duration::from_secs(60), 100);
        assert!(matches!(s.claim("k", "fp", Duration::from_secs(1)).await, Claim::Fresh));
        s.complete("k", Record { fingerprint: "fp".into(), response: response("neutral") }).await;
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(s.claim("k", "fp", Duration::from_secs(1)).await, Claim::Fresh));
    }
}
