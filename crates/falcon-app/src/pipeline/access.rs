//! Who may ask, and how much: API keys, per-client rate limits and admission.
//!
//! - **API keys** (`API_KEYS_FILE`: `id:sha256-of-key[:scopes]` a line, so the file holds
//!   no secret; `API_KEYS`: `id:key[:scopes]`, comma-separated, for development). A key is
//!   hashed and compared with every configured hash in constant time; only its id is ever
//!   logged. Scopes: `infer` (the inference routes, the default) and `admin` (model reload).
//! - **Rate limits** (GCRA, the `governor` crate): `RATE_LIMIT_PER_MINUTE` with a burst of
//!   `RATE_LIMIT_BURST`, per API key id, else per client address.
//! - **Admission** (`MAX_CONCURRENT_REQUESTS`): past it a request is refused before any
//!   work, so an overload costs microseconds, not a queue slot.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::InferError;
use crate::telemetry::metrics;

/// The `Authorization` header as sent: never printed, not even by `Debug`.
#[derive(Clone, Default)]
pub struct Credential(Option<String>);

impl Credential {
    pub fn new(header: Option<&str>) -> Self {
        Self(header.map(str::to_owned))
    }

    pub fn expose(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Credential(***)" } else { "Credential(none)" })
    }
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `POST /infer`, `POST /infer/batch`.
    Infer,
    /// `POST /admin/reload`.
    Admin,
}

impl Scope {
    fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "infer" => Ok(Self::Infer),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown scope {other:?} (infer, admin)")),
        }
    }
}

#[derive(Debug, Clone)]
struct Key {
    id: Arc<str>,
    sha256: [u8; 32],
    scopes: Vec<Scope>,
}

/// The configured API keys. Empty: every route is open (the default).
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    keys: Vec<Key>,
}

/// Who a request is, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No keys are configured: the API is open.
    Anyone,
    /// A valid key, by id.
    Key(Arc<str>),
}

impl Caller {
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Self::Anyone => None,
            Self::Key(id) => Some(id),
        }
    }
}

impl ApiKeys {
    /// From `API_KEYS_FILE` (hashes) and `API_KEYS` (plain keys, development); both may be
    /// given. The error names the line or entry that is wrong.
    pub fn load(file: Option<&Path>, plain: Option<&str>) -> Result<Self, String> {
        let mut keys = Vec::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let key = parse_hashed(line).map_err(|e| format!("{} line {}: {e}", path.display(), n + 1))?;
                keys.push(key);
            }
        }
        if let Some(plain) = plain {
            for (n, entry) in plain.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
                let mut parts = entry.splitn(3, ':');
                let (Some(id), Some(secret)) = (parts.next(), parts.next()) else {
                    return Err(format!("API_KEYS entry {}: expected id:key[:scopes]", n + 1));
                };
                if secret.is_empty() {
                    return Err(format!("API_KEYS entry {} ({id}): empty key", n + 1));
                }
                keys.push(Key {
                    id: check_id(id)?.into(),
                    sha256: Sha256::digest(secret.as_bytes()).into(),
                    scopes: parse_scopes(parts.next())?,
                });
            }
        }
        let mut ids: Vec<&str> = keys.iter().map(|k| &*k.id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("API key id {:?} is configured twice", w[0]));
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every configured key id: the bounded label set of `api_key_requests_total`.
    pub fn ids(&self) -> Vec<Arc<str>> {
        self.keys.iter().map(|k| Arc::clone(&k.id)).collect()
    }

    /// Checks an `Authorization` header for `scope`. With no keys configured, anyone may.
    pub fn authenticate(&self, authorization: Option<&str>, scope: Scope) -> Result<Caller, InferError> {
        if self.keys.is_empty() {
            return Ok(Caller::Anyone);
        }
        let Some(header) = authorization else {
            return Err(InferError::Unauthorized("send Authorization: Bearer <API key>"));
        };
        // The scheme is case-insensitive (RFC 9110 §11.1): `Bearer`, `bearer`, `BEARER`.
        let token = header.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")).map(|(_, t)| t);
        let Some(token) = token else {
            return Err(InferError::Unauthorized("the Authorization header must be Bearer <API key>"));
        };
        let hash: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        // Compare with every key, all the way: the time taken says nothing about which
        // key, or how much of one, matched.
        let mut found: Option<&Key> = None;
        for key in &self.keys {
            if constant_time_eq(&key.sha256, &hash) {
                found = Some(key);
            }
        }
        let key = found.ok_or(InferError::Unauthorized("unknown API key"))?;
        if !key.scopes.contains(&scope) {
            return Err(InferError::Forbidden("this API key may not use this route"));
        }
        Ok(Caller::Key(Arc::clone(&key.id)))
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

fn check_id(id: &str) -> Result<&str, String> {
    let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok { Ok(id) } else { Err(format!("API key id {id:?}: 1-64 characters of A-Z a-z 0-9 - _ .")) }
}

fn parse_scopes(text: Option<&str>) -> Result<Vec<Scope>, String> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(vec![Scope::Infer]),
        Some(t) => t.split(['+', ';', ' ']).filter(|s| !s.is_empty()).map(Scope::parse).collect(),
    }
}

fn parse_hashed(line: &str) -> Result<Key, String> {
    let mut parts = line.splitn(3, ':');
    let (Some(id), Some(hash)) = (parts.next(), parts.next()) else {
        return Err("expected id:sha256[:scopes]".into());
    };
    let bytes = hex::decode(hash.trim()).map_err(|_| "the hash is not hex".to_owned())?;
    let sha256: [u8; 32] = bytes.try_into().map_err(|_| "the hash is not 64 hex digits (SHA-256)".to_owned())?;
    Ok(Key { id: check_id(id.trim())?.into(), sha256, scopes: parse_scopes(parts.next())? })
}

/// Per-client request budget (GCRA).
pub struct RateLimits {
    limiter: DefaultKeyedRateLimiter<String, StateInformationMiddleware>,
    per_minute: u32,
    burst: u32,
}

/// What a rate-limited request is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    pub retry_after: Duration,
    pub limit: u32,
    pub window: Duration,
}

impl RateLimits {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let rate = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst_nz = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(rate).allow_burst(burst_nz);
        let limiter = DefaultKeyedRateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>();
        Self { limiter, per_minute, burst: burst.max(1) }
    }

    /// Takes one request from `client`'s budget; `client` is `key:<id>` or `ip:<address>`.
    pub fn check(&self, client: &str, kind: &'static str) -> Result<u32, InferError> {
        match self.limiter.check_key(&client.to_owned()) {
            Ok(snapshot) => Ok(snapshot.remaining_burst_capacity()),
            Err(not_until) => {
                metrics::record_rate_limited(kind);
                let retry_after = not_until.wait_time_from(DefaultClock::default().now());
                Err(InferError::RateLimited(Limited {
                    retry_after,
                    limit: self.burst,
                    window: Duration::from_secs(60) * self.burst / self.per_minute.max(1),
                }))
            }
        }
    }

    /// Forgets clients that have been quiet long enough to have a full budget again.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn clients(&self) -> usize {
        self.limiter.len()
    }
}

/// `MAX_CONCURRENT_REQUESTS`: requests being served at once.
pub struct Admission(Arc<Semaphore>);

/// An admitted request's place: its `MAX_CONCURRENT_REQUESTS` permit where there is a
/// limit, and its count in `inference_requests_in_progress` until it is dropped.
pub struct Place<'a> {
    _permit: Option<OwnedSemaphorePermit>,
    counted: &'a metrics::PathMetrics,
}

impl<'a> Place<'a> {
    /// A place, or 503 `overloaded` at once when `admission` has none left.
    pub fn take(admission: Option<&Admission>, counted: &'a metrics::PathMetrics) -> Result<Self, InferError> {
        let permit = admission.map(Admission::admit).transpose()?;
        counted.admitted();
        Ok(Self { _permit: permit, counted })
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.counted.left();
    }
}

impl Admission {
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max.max(1))))
    }

    /// A place for one request, or 503 `overloaded` at once.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, InferError> {
        Arc::clone(&self.0).try_acquire_owned().map_err(|_| {
            metrics::record_concurrency_limited();
            InferError::Overloaded("too many concurrent requests (MAX_CONCURRENT_REQUESTS)")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(s: &str) -> String {
        hex::encode(Sha256::digest(s.as_bytes()))
    }

    #[test]
    fn keys_from_a_file_of_hashes_and_from_plain_development_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, format!("# comment\n\nbilling:{}\nops:{}:infer+admin\n", sha("s3cret"), sha("root")))
            .unwrap();
        let keys = ApiKeys::load(Some(&file), Some("dev:devkey")).unwrap();
        assert_eq!(keys.authenticate(Some("Bearer s3cret"), Scope::Infer), Ok(Caller::Key("billing".into())));
        assert_eq!(keys.authenticate(Some("Bearer devkey"), Scope::Infer), Ok(Caller::Key("dev".into())));
        assert_eq!(keys.authenticate(Some("Bearer root"), Scope::Admin), Ok(Caller::Key("ops".into())));
        assert!(matches!(keys.authenticate(Some("Bearer s3cret"), Scope::Admin), Err(InferError::Forbidden(_))));
        assert!(matches!(keys.authenticate(Some("Bearer nope"), Scope::Infer), Err(InferError::Unauthorized(_))));
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            let header = format!("{scheme} s3cret");
            assert_eq!(keys.authenticate(Some(&header), Scope::Infer), Ok(Caller::Key("billing".into())), "{scheme}");
        }
        assert!(matches!(keys.authenticate(Some("Basic s3cret"), Scope::Infer), Err(InferError::Unauthorized(_))));
        assert!(matches!(keys.authenticate(None, Scope::Infer), Err(InferError::Unauthorized(_))));
        assert!(matches!(keys.authenticate(Some("Basic abc"), Scope::Infer), Err(InferError::Unauthorized(_))));
        assert_eq!(ApiKeys::default().authenticate(None, Scope::Admin), Ok(Caller::Anyone));
    }

    #[test]
    fn bad_key_files_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, format!("ok:{}\nbad:xyz\n", sha("a"))).unwrap();
        assert!(ApiKeys::load(Some(&file), None).unwrap_err().contains("line 2"));
        assert!(ApiKeys::load(None, Some("a:x,a:y")).unwrap_err().contains("twice"));
        assert!(ApiKeys::load(None, Some("a:x:root")).unwrap_err().contains("scope"));
        assert!(ApiKeys::load(None, Some("a b:x")).unwrap_err().contains("id"));
    }

    #[test]
    fn the_burst_passes_then_the_client_waits_and_others_do_not() {
        let limits = RateLimits::new(60, 3);
        for _ in 0..3 {
            assert!(limits.check("ip:1", "ip").is_ok());
        }
        let Err(InferError::RateLimited(l)) = limits.check("ip:1", "ip") else { panic!("not limited") };
        assert!(l.retry_after > Duration::from_millis(500) && l.retry_after <= Duration::from_secs(1), "{l:?}");
        assert_eq!(l.limit, 3);
        assert!(limits.check("ip:2", "ip").is_ok(), "another client has its own budget");
        assert_eq!(limits.clients(), 2);
    }

    #[test]
    fn admission_refuses_past_the_limit_and_frees_on_drop() {
        let a = Admission::new(2);
        let (p1, _p2) = (a.admit().unwrap(), a.admit().unwrap());
        assert!(matches!(a.admit(), Err(InferError::Overloaded(_))));
        drop(p1);
        assert!(a.admit().is_ok());
    }

    #[test]
    fn a_place_holds_the_permit_until_dropped() {
        let a = Admission::new(1);
        let m = metrics::PathMetrics::new();
        let place = Place::take(Some(&a), &m).unwrap();
        assert!(matches!(Place::take(Some(&a), &m), Err(InferError::Overloaded(_))));
        drop(place);
        assert!(Place::take(Some(&a), &m).is_ok());
        assert!(Place::take(None, &m).is_ok(), "no limit: always a place");
    }
}
