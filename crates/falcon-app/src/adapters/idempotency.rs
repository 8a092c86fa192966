//! `X-Idempotency-Key`: the first request with a key stores its response; repeats replay
//! it; the same key with a different body is a conflict; concurrent requests with one key
//! run the model once. In-process without Redis; across workers with it.
//!
//! Across workers the claim is a Redis lock, `idempotency-lock:<key>` holding the owner's
//! fingerprint, so exactly one request computes. The others poll `idempotency:<key>` until
//! the response is there. If the lock expires or is released without a response (the owner
//! failed), the next poll claims it.
//!
//! Redis may run out of memory; the cache's entries must give way then, never an idempotency
//! record (a retried payment-style request would be computed twice). So records and locks
//! carry no Redis TTL, and Redis runs with `maxmemory-policy volatile-lru`, which evicts only
//! keys that have one: the cache's. Their expiry is kept in the sorted set
//! `idempotency-expiry` (member: the key, score: when it expires, in Redis's clock, ms),
//! written in the same script as the key, and each worker deletes what is due every few
//! seconds (`sweep`). A lock is held while its score is in the future; one whose owner
//! crashed is taken over after `lock_ttl`. Every step is one Lua script, so a key and its
//! expiry never disagree. See docs/redis.md.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use falcon_backend::Prediction;
use metrics::counter;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::adapters::cache::redis::{RedisStore, record_fallback};
use crate::telemetry::metrics::{FALLBACK_TRIGGERED, IDEMPOTENCY_EVICTIONS, IDEMPOTENCY_HITS, IDEMPOTENCY_MISSES};

/// A stored answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub fingerprint: String,
    pub response: StoredAnswer,
}

/// An answer as the store keeps it: by label, with the model version it came from. The JSON
/// is the one every build since idempotency keys existed reads and writes (the fields of
/// `POST /infer`'s answer), so workers of two builds share records during a rolling deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAnswer {
    pub prediction: String,
    pub confidence: f64,
    pub probabilities: BTreeMap<String, f64>,
    pub cache_hit: bool,
    pub idempotency_hit: bool,
    pub worker_id: String,
    pub model_version: String,
    pub processing_time_ms: f64,
    pub request_id: String,
    /// The model that answered, by name (the answer's `model`). Absent in records of builds
    /// that served one model: those were made by the default model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl StoredAnswer {
    /// Whether the model `name` made this record. A record without a name predates the
    /// repository, when every answer came from the one model: it is taken as this one's, so
    /// a retry across the upgrade is still a replay.
    pub fn made_by(&self, name: &str) -> bool {
        self.model.as_deref().is_none_or(|m| m == name)
    }

    /// What to store of `prediction`, made by the model with `labels` and `model_version`.
    pub fn new(
        prediction: &Prediction,
        labels: &[String],
        model_version: &str,
        worker_id: &str,
        request_id: &str,
    ) -> Self {
        Self {
            prediction: prediction.label(labels).to_owned(),
            confidence: prediction.confidence,
            probabilities: prediction.by_label(labels).map(|(l, p)| (l.to_owned(), p)).collect(),
            cache_hit: false,
            idempotency_hit: false,
            worker_id: worker_id.to_owned(),
            model_version: model_version.to_owned(),
            processing_time_ms: 0.0,
            request_id: request_id.to_owned(),
            model: None,
        }
    }

    /// The stored prediction, read by the model with `labels` (the one that stored it: the
    /// caller checks the version); `None` if the record does not fit those labels.
    pub fn prediction(&self, labels: &[String]) -> Option<Prediction> {
        let class = labels.iter().position(|l| *l == self.prediction)?;
        let probabilities = labels.iter().map(|l| self.probabilities.get(l).copied()).collect::<Option<Vec<_>>>()?;
        Some(Prediction { class, confidence: self.confidence, probabilities })
    }
}

/// The outcome of claiming a key.
#[derive(Debug)]
pub enum Claim {
    /// First request with this key: compute, then `complete` or `release`.
    Fresh,
    /// Answered before: replay this.
    Replay(StoredAnswer),
    /// The key was used with a different body.
    Conflict,
    /// The store cannot answer (Redis down): compute without idempotency.
    Unavailable,
}

enum Slot {
    /// A request is computing. Past `expires` the claim is abandoned (its owner is gone
    /// without releasing it) and the next request takes it over, as the Redis lock expires.
    InFlight {
        fingerprint: String,
        done: Arc<Notify>,
        expires: Instant,
    },
    Done {
        record: Record,
        expires: Instant,
    },
}

/// The in-process store: slots by key, and the stored records in the order they expire
/// (every record lives for the same TTL), so the oldest can be evicted first.
#[derive(Default)]
struct Slots {
    map: HashMap<String, Slot>,
    records: std::collections::VecDeque<(String, Instant)>,
}

impl Slots {
    /// Makes room for one more slot: drops expired records, then evicts the oldest stored
    /// records. In-progress claims are never evicted. False if every slot is one.
    fn make_room(&mut self, max_entries: usize, now: Instant) -> bool {
        while self.map.len() >= max_entries {
            let Some((key, expires)) = self.records.pop_front() else {
                self.map.retain(|_, s| !matches!(s, Slot::InFlight { expires, .. } if *expires <= now));
                return self.map.len() < max_entries;
            };
            // The queue entry may be stale (the key was claimed again since).
            if matches!(self.map.get(&key), Some(Slot::Done { expires: e, .. }) if *e == expires) {
                self.map.remove(&key);
                if expires > now {
                    counter!(IDEMPOTENCY_EVICTIONS).increment(1);
                }
            }
        }
        true
    }
}

/// Where records live: in this process, or in Redis (shared by every worker).
pub struct IdempotencyStore(Backend);

enum Backend {
    Memory { slots: Mutex<Slots>, ttl: Duration, max_entries: usize, claim_ttl: Duration },
    Redis { store: Arc<RedisStore>, ttl: Duration, lock_ttl: Duration },
}

const POLL: Duration = Duration::from_millis(10);

impl IdempotencyStore {
    /// The in-process store: at most `max_entries` keys (stored records are evicted oldest
    /// first beyond it, in-progress claims never); a claim whose owner vanished without
    /// releasing it is taken over after `claim_ttl`.
    pub fn memory(ttl: Duration, max_entries: usize, claim_ttl: Duration) -> Self {
        Self(Backend::Memory { slots: Mutex::default(), ttl, max_entries, claim_ttl })
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
            Backend::Memory { slots, max_entries, claim_ttl, .. } => {
                claim_memory(slots, *max_entries, *claim_ttl, key, fp, deadline).await
            }
            Backend::Redis { store, lock_ttl, .. } => claim_redis(store, *lock_ttl, key, fp, deadline).await,
        };
        match (&claim, &self.0) {
            (Claim::Replay(_), _) => counter!(IDEMPOTENCY_HITS).increment(1),
            (Claim::Fresh, _) => counter!(IDEMPOTENCY_MISSES).increment(1),
            (Claim::Unavailable, Backend::Redis { .. }) => record_fallback("idempotency_bypass"),
            // The in-process store is never "down": it was full of in-progress claims, or
            // the wait for a concurrent owner ran out.
            (Claim::Unavailable, Backend::Memory { .. }) => {
                counter!(FALLBACK_TRIGGERED, "dependency" => "memory", "fallback_type" => "idempotency_bypass")
                    .increment(1);
            }
            (Claim::Conflict, _) => {}
        }
        claim
    }

    /// Stores the response of a `Fresh` claim.
    pub async fn complete(&self, key: &str, record: Record) {
        match &self.0 {
            Backend::Memory { slots, ttl, .. } => {
                let Ok(mut slots) = slots.lock() else { return };
                let expires = Instant::now() + *ttl;
                slots.records.push_back((key.to_owned(), expires));
                if let Some(Slot::InFlight { done, .. }) =
                    slots.map.insert(key.to_owned(), Slot::Done { record, expires })
                {
                    done.notify_waiters();
                }
            }
            Backend::Redis { store, ttl, .. } => {
                let Ok(json) = serde_json::to_string(&record) else { return };
                let complete = script(COMPLETE)
                    .arg(3)
                    .arg(record_key(key))
                    .arg(lock_key(key))
                    .arg(EXPIRY)
                    .arg(json)
                    .arg(ttl.as_millis().max(1) as u64)
                    .to_owned();
                if store.call::<()>("idempotency_set", &complete).await.is_err() {
                    record_fallback("idempotency_bypass");
                    unlock(store, key).await;
                }
            }
        }
    }

    /// Gives up a `Fresh` claim without a response (the request failed), so a retry computes.
    pub async fn release(&self, key: &str) {
        match &self.0 {
            Backend::Memory { slots, .. } => release_memory(slots, key),
            Backend::Redis { store, .. } => unlock(store, key).await,
        }
    }

    /// Gives up a `Fresh` claim from a request that was cancelled (its client went away):
    /// at once in this process; in Redis with one `DEL` sent from a short task (a drop
    /// cannot wait for it), and the lock's TTL still bounds the claim if that fails.
    pub fn abandon(self: &Arc<Self>, key: &str) {
        match &self.0 {
            Backend::Memory { slots, .. } => release_memory(slots, key),
            Backend::Redis { .. } => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let (store, key) = (Arc::clone(self), key.to_owned());
                    runtime.spawn(async move { store.release(&key).await });
                }
            }
        }
    }
}

fn release_memory(slots: &Mutex<Slots>, key: &str) {
    let Ok(mut slots) = slots.lock() else { return };
    if matches!(slots.map.get(key), Some(Slot::InFlight { .. }))
        && let Some(Slot::InFlight { done, .. }) = slots.map.remove(key)
    {
        done.notify_waiters();
    }
}

/// Releases a `Fresh` claim if the request never settles it: dropped with its future when
/// the client goes away, or when the handler panics.
pub struct ClaimGuard {
    store: Arc<IdempotencyStore>,
    key: Option<String>,
}

impl ClaimGuard {
    pub fn new(store: Arc<IdempotencyStore>, key: &str) -> Self {
        Self { store, key: Some(key.to_owned()) }
    }

    /// The claim was completed or released: nothing to do on drop.
    pub fn settled(mut self) {
        self.key = None;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.store.abandon(&key);
        }
    }
}

/// The sorted set of when each idempotency key in Redis expires.
pub const EXPIRY: &str = "idempotency-expiry";

/// Redis's clock in milliseconds, for the scripts below: every worker reads the same clock.
const NOW_MS: &str =
    "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) ";

/// KEYS: lock, expiry set. ARGV: fingerprint, lock TTL (ms). Takes the lock unless it is
/// held: nil when taken, else the holder's fingerprint. A lock written by an earlier build
/// (with a Redis TTL, no expiry score) is held while its TTL runs.
const LOCK: &str = "local owner = redis.call('GET', KEYS[1]) \
if owner then \
  local due = redis.call('ZSCORE', KEYS[2], KEYS[1]) \
  if (due and tonumber(due) > now) or (not due and redis.call('PTTL', KEYS[1]) > 0) then return owner end \
end \
redis.call('SET', KEYS[1], ARGV[1]) \
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), KEYS[1]) \
return false";

/// KEYS: record, lock, expiry set. ARGV: record JSON, record TTL (ms). Stores the record,
/// with no Redis TTL, and gives up the lock.
const COMPLETE: &str = "redis.call('SET', KEYS[1], ARGV[1]) \
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), KEYS[1]) \
redis.call('DEL', KEYS[2]) \
redis.call('ZREM', KEYS[3], KEYS[2]) \
return 1";

/// KEYS: lock, expiry set. Gives up the lock.
const UNLOCK: &str = "redis.call('DEL', KEYS[1]) redis.call('ZREM', KEYS[2], KEYS[1]) return 1";

/// KEYS: expiry set. ARGV: most keys. Deletes keys whose expiry is due; returns how many.
const SWEEP: &str = "local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1])) \
for _, k in ipairs(due) do redis.call('DEL', k) end \
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end \
return #due";

/// Keys one sweep script deletes at most.
const SWEEP_BATCH: u64 = 500;

/// `EVAL` of `body`, with Redis's clock in `now`.
fn script(body: &str) -> redis::Cmd {
    redis::cmd("EVAL").arg(format!("{NOW_MS}{body}")).to_owned()
}

async fn unlock(store: &RedisStore, key: &str) {
    let unlock = script(UNLOCK).arg(2).arg(lock_key(key)).arg(EXPIRY).to_owned();
    let _ = store.call::<()>("idempotency_unlock", &unlock).await;
}

impl IdempotencyStore {
    /// Deletes the Redis records and locks whose time is up; returns how many. (The
    /// in-process store expires its own.)
    pub async fn sweep(&self) -> Result<u64, crate::adapters::cache::redis::StoreError> {
        let Backend::Redis { store, .. } = &self.0 else { return Ok(0) };
        let mut deleted = 0;
        loop {
            let sweep = script(SWEEP).arg(1).arg(EXPIRY).arg(SWEEP_BATCH).to_owned();
            let n: u64 = store.call("idempotency_sweep", &sweep).await?;
            deleted += n;
            if n < SWEEP_BATCH {
                return Ok(deleted);
            }
        }
    }

    /// Sweeps every `every` until `stopping`.
    pub async fn run_sweeper(self: Arc<Self>, every: Duration, mut stopping: crate::shutdown::Stopping) {
        let mut ticks = crate::shutdown::every(every);
        while stopping.tick(&mut ticks).await {
            if let Ok(n) = self.sweep().await
                && n > 0
            {
                tracing::debug!(keys = n, "Deleted expired idempotency records and locks");
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
    slots: &Mutex<Slots>,
    max_entries: usize,
    claim_ttl: Duration,
    key: &str,
    fp: &str,
    deadline: Instant,
) -> Claim {
    loop {
        let waiter = {
            let Ok(mut slots) = slots.lock() else { return Claim::Unavailable };
            let now = Instant::now();
            match slots.map.get(key) {
                Some(Slot::Done { record, expires }) if *expires > now => {
                    return if record.fingerprint == fp {
                        Claim::Replay(record.response.clone())
                    } else {
                        Claim::Conflict
                    };
                }
                Some(Slot::InFlight { fingerprint, done, expires }) if *expires > now => {
                    if fingerprint != fp {
                        return Claim::Conflict;
                    }
                    Arc::clone(done)
                }
                // No slot, an expired record, or an abandoned claim: this request owns it.
                existing => {
                    if existing.is_none() && !slots.make_room(max_entries, now) {
                        tracing::warn!(
                            max_entries,
                            "Idempotency store full of in-progress claims; request served without idempotency"
                        );
                        return Claim::Unavailable;
                    }
                    let done = Arc::new(Notify::new());
                    let slot = Slot::InFlight { fingerprint: fp.to_owned(), done, expires: now + claim_ttl };
                    if let Some(Slot::InFlight { done, .. }) = slots.map.insert(key.to_owned(), slot) {
                        done.notify_waiters();
                    }
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
        let lock = script(LOCK)
            .arg(2)
            .arg(lock_key(key))
            .arg(EXPIRY)
            .arg(fp)
            .arg(lock_ttl.as_millis().max(1) as u64)
            .to_owned();
        match store.call::<Option<String>>("idempotency_lock", &lock).await {
            Ok(None) => {
                // The previous owner may have stored its record and unlocked between our GET
                // and our lock. It writes the record before unlocking, so look once more.
                return match stored(store, key, fp).await {
                    Ok(None) => Claim::Fresh,
                    Ok(Some(verdict)) => {
                        unlock(store, key).await;
                        verdict
                    }
                    Err(()) => Claim::Unavailable,
                };
            }
            // Someone else is computing; a different body under the same key conflicts now.
            Ok(Some(owner)) if owner != fp => return Claim::Conflict,
            Ok(Some(_)) => {}
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

    fn response(prediction: &str) -> StoredAnswer {
        StoredAnswer {
            prediction: prediction.into(),
            confidence: 0.9,
            probabilities: BTreeMap::new(),
            cache_hit: false,
            idempotency_hit: false,
            worker_id: "w".into(),
            model_version: "v".into(),
            processing_time_ms: 1.0,
            request_id: "r".into(),
            model: None,
        }
    }

    #[tokio::test]
    async fn memory_store_replays_and_detects_conflicts() {
        let s = IdempotencyStore::memory(Duration::from_secs(60), 100, Duration::from_secs(10));
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
        let s = Arc::new(IdempotencyStore::memory(Duration::from_secs(60), 100, Duration::from_secs(10)));
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
        let s = IdempotencyStore::memory(Duration::from_secs(60), 100, Duration::from_secs(10));
        assert!(matches!(s.claim("k", "fp", Duration::from_secs(1)).await, Claim::Fresh));
        s.release("k").await;
        assert!(matches!(s.claim("k", "fp", Duration::from_secs(1)).await, Claim::Fresh));
    }

    #[tokio::test(start_paused = true)]
    async fn records_expire_after_the_ttl() {
        let s = IdempotencyStore::memory(Duration::from_secs(60), 100, Duration::from_secs(10));
        assert!(matches!(s.claim("k", "fp", Duration::from_secs(1)).await, Claim::Fresh));
        s.complete("k", Record { fingerprint: "fp".into(), response: response("neutral") }).await;
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(s.claim("k", "fp", Duration::from_secs(1)).await, Claim::Fresh));
    }

    #[tokio::test]
    async fn the_oldest_records_are_evicted_and_in_progress_claims_never() {
        let s = IdempotencyStore::memory(Duration::from_secs(60), 3, Duration::from_secs(10));
        for k in ["a", "b", "c"] {
            assert!(matches!(s.claim(k, "fp", Duration::from_secs(1)).await, Claim::Fresh));
            s.complete(k, Record { fingerprint: "fp".into(), response: response(k) }).await;
        }
        // Full: a new key evicts the oldest record ("a"), the others stay.
        assert!(matches!(s.claim("d", "fp", Duration::from_secs(1)).await, Claim::Fresh));
        assert!(matches!(s.claim("b", "fp", Duration::from_secs(1)).await, Claim::Replay(_)));
        assert!(matches!(s.claim("a", "fp", Duration::from_secs(1)).await, Claim::Fresh), "a was evicted");
        // Now "d" and "a" are in progress and "c" is evicted for the next key, "b" after it;
        // with three claims in progress, a fourth key is not honoured rather than evict one.
        assert!(matches!(s.claim("e", "fp", Duration::from_secs(1)).await, Claim::Fresh));
        assert!(matches!(s.claim("f", "fp", Duration::from_millis(10)).await, Claim::Unavailable));
        for k in ["d", "a", "e"] {
            assert!(matches!(s.claim(k, "other", Duration::from_millis(10)).await, Claim::Conflict), "{k} kept");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_claim_expires_like_the_redis_lock() {
        let s = IdempotencyStore::memory(Duration::from_secs(60), 100, Duration::from_secs(10));
        assert!(matches!(s.claim("k", "fp1", Duration::from_secs(1)).await, Claim::Fresh));
        // Its owner never completes nor releases it.
        assert!(matches!(s.claim("k", "fp2", Duration::from_secs(1)).await, Claim::Conflict));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(matches!(s.claim("k", "fp2", Duration::from_secs(1)).await, Claim::Fresh));
    }

    #[tokio::test]
    async fn a_dropped_guard_releases_the_claim_at_once() {
        let s = Arc::new(IdempotencyStore::memory(Duration::from_secs(60), 100, Duration::from_secs(600)));
        assert!(matches!(s.claim("k", "fp1", Duration::from_secs(1)).await, Claim::Fresh));
        drop(ClaimGuard::new(Arc::clone(&s), "k"));
        assert!(matches!(s.claim("k", "fp2", Duration::from_secs(1)).await, Claim::Fresh), "not a conflict");
        let settled = ClaimGuard::new(Arc::clone(&s), "k");
        settled.settled();
        assert!(matches!(s.claim("k", "fp2", Duration::from_millis(10)).await, Claim::Unavailable), "still claimed");
    }

    /// A record as an earlier build stored it (the fields of `POST /infer`'s answer) replays,
    /// and what this build stores reads the same way.
    #[test]
    fn records_keep_the_answer_json_of_earlier_builds() {
        let old = r#"{"fingerprint":"fp","response":{"prediction":"positive","confidence":0.75,
            "probabilities":{"negative":0.25,"positive":0.75},"cache_hit":false,"idempotency_hit":false,
            "worker_id":"w","model_version":"v","processing_time_ms":1.5,"request_id":"r"}}"#;
        let record: Record = serde_json::from_str(old).unwrap();
        let labels = ["negative".to_owned(), "positive".to_owned()];
        let p = record.response.prediction(&labels).unwrap();
        assert_eq!((p.class, p.confidence, p.probabilities), (1, 0.75, vec![0.25, 0.75]));
        let again = StoredAnswer::new(&record.response.prediction(&labels).unwrap(), &labels, "v", "w", "r");
        let json: serde_json::Value = serde_json::to_value(&again).unwrap();
        let fields: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            [
                "cache_hit",
                "confidence",
                "idempotency_hit",
                "model_version",
                "prediction",
                "probabilities",
                "processing_time_ms",
                "request_id",
                "worker_id"
            ]
        );
        assert_eq!(record.response.prediction(&["a".to_owned(), "b".to_owned()]), None, "labels of another model");
    }
}
