//! The model a worker serves, and changing it without a restart.
//!
//! - **Hot reload** (`ModelSlot`): SIGHUP or `POST /admin/reload` loads `MODEL_PATH` again
//!   off the request path, checks it (the loader checks format and checksum; here: the same
//!   labels, and a smoke prediction that answers one probability per label summing to 1),
//!   then swaps it in atomically. A request takes one snapshot of the model when it starts
//!   and uses it to the end (cache key, inference, response, log row), so in-flight
//!   requests finish on the old model and no answer mixes two. A failed load keeps the old
//!   model and says why.
//! - **Shadow scoring** (`Shadow`): a candidate model scores a sample of live texts on a
//!   thread of its own, after the answer is sent; the agreement with the live model, the
//!   candidate's class mix and its latency are metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use falcon_backend::Backend;

use crate::telemetry::metrics;

/// A loaded model, with where it came from and how long it took.
pub struct LoadedBackend {
    pub backend: Arc<dyn Backend>,
    /// `MODEL_PATH`, or `built-in` for the model compiled into the binary.
    pub source: String,
    pub load_time: Duration,
}

/// Loads the model again (from `MODEL_PATH`); the `falcon` binary provides it, since only
/// it knows the concrete models.
pub type Reloader = Arc<dyn Fn() -> Result<LoadedBackend, String> + Send + Sync>;

/// The model being served.
struct Served {
    backend: Arc<dyn Backend>,
    source: String,
}

/// Why a reload changed nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReloadError {
    #[error("this worker cannot reload its model (no loader configured)")]
    NotConfigured,
    #[error("cannot load the model: {0}")]
    Load(String),
    #[error("the new model failed its checks: {0}")]
    Invalid(String),
    /// The load did not finish within `MODEL_RELOAD_TIMEOUT_SECONDS` (a hung file system):
    /// it is abandoned, and until it ends no other reload starts.
    #[error("the load did not finish within {0:?} (MODEL_RELOAD_TIMEOUT_SECONDS); it is abandoned")]
    TimedOut(Duration),
    #[error("a reload is already in progress")]
    InProgress,
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq)]
pub struct Reloaded {
    pub previous_version: String,
    pub model_version: String,
    pub source: String,
    pub load_ms: f64,
    /// False when the file held the model already served (same version).
    pub changed: bool,
}

/// The served model, swappable while requests run.
pub struct ModelSlot {
    current: ArcSwap<Served>,
    reloader: Option<Reloader>,
    /// One reload at a time: held by the load itself, so a load abandoned after its timeout
    /// keeps it until it ends (at most one thread ever waits on a hung file system).
    reloading: Arc<tokio::sync::Mutex<()>>,
    /// How long a reload waits for its load (`MODEL_RELOAD_TIMEOUT_SECONDS`).
    reload_timeout: Duration,
    /// Whether this is the worker's default model, the one `falcon_build_info` describes.
    default: bool,
    /// The model's name in the repository, for log lines and metric labels.
    name: String,
    /// How many versions this slot has served: 1, then one more at each reload that swaps in
    /// another version (Triton's integer version, which its tools parse).
    generation: AtomicU64,
}

/// `MODEL_RELOAD_TIMEOUT_SECONDS`'s default.
pub const DEFAULT_RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

impl ModelSlot {
    /// The worker's one model, `sentiment` (zero-config, and tests).
    pub fn new(backend: Arc<dyn Backend>, source: String, reloader: Option<Reloader>) -> Self {
        Self::serving(crate::models::DEFAULT_MODEL, true, backend, source, reloader)
    }

    /// The model `name` of the repository (`default`: the one that answers requests naming
    /// none, which `falcon_build_info` describes). Its `model_info` and reference class
    /// shares carry its name.
    pub fn serving(
        name: &str,
        default: bool,
        backend: Arc<dyn Backend>,
        source: String,
        reloader: Option<Reloader>,
    ) -> Self {
        metrics::record_model_info(name, backend.model_version(), None);
        if default {
            metrics::record_build_info(backend.model_version(), None);
        }
        metrics::record_reference_shares(name, backend.labels(), backend.reference_class_shares().as_deref());
        Self {
            current: ArcSwap::from_pointee(Served { backend, source }),
            reloader,
            reloading: Default::default(),
            reload_timeout: DEFAULT_RELOAD_TIMEOUT,
            default,
            name: name.to_owned(),
            generation: AtomicU64::new(1),
        }
    }

    /// The version being served as Triton counts versions: 1 for the one loaded first, one
    /// more for each reload that swapped in another.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The longest a reload waits for its load.
    #[must_use]
    pub fn with_reload_timeout(mut self, timeout: Duration) -> Self {
        self.reload_timeout = timeout;
        self
    }

    /// The model to use for one whole request.
    pub fn current(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.current.load().backend)
    }

    pub fn source(&self) -> String {
        self.current.load().source.clone()
    }

    /// Loads, checks and swaps in the model at `MODEL_PATH`. Never on a request thread: the
    /// load and the smoke prediction run on the blocking pool.
    pub async fn reload(&self, trigger: &'static str) -> Result<Reloaded, ReloadError> {
        let previous = self.current.load_full();
        let result = match Arc::clone(&self.reloading).try_lock_owned() {
            Ok(one_at_a_time) => self.load_checked(&previous, one_at_a_time).await,
            Err(_) => Err(ReloadError::InProgress),
        };
        let previous_version = previous.backend.model_version().to_owned();
        match result {
            Ok(loaded) => {
                let reloaded = Reloaded {
                    model_version: loaded.backend.model_version().to_owned(),
                    changed: loaded.backend.model_version() != previous_version,
                    previous_version,
                    source: loaded.source.clone(),
                    load_ms: loaded.load_time.as_secs_f64() * 1000.0,
                };
                metrics::record_model_info(&self.name, &reloaded.model_version, Some(&reloaded.previous_version));
                if self.default {
                    metrics::record_build_info(&reloaded.model_version, Some(&reloaded.previous_version));
                }
                metrics::record_reference_shares(
                    &self.name,
                    loaded.backend.labels(),
                    loaded.backend.reference_class_shares().as_deref(),
                );
                self.current.store(Arc::new(Served { backend: loaded.backend, source: loaded.source }));
                if reloaded.changed {
                    self.generation.fetch_add(1, Ordering::Relaxed);
                }
                metrics::record_reload(true);
                tracing::info!(
                    trigger,
                    model = %self.name,
                    previous_version = %reloaded.previous_version,
                    model_version = %reloaded.model_version,
                    changed = reloaded.changed,
                    model_path = %reloaded.source,
                    load_ms = reloaded.load_ms,
                    "Model reloaded"
                );
                Ok(reloaded)
            }
            Err(error) => {
                metrics::record_reload(false);
                tracing::error!(trigger, model = %self.name, model_version = %previous_version, error = %error, "Model reload failed; still serving the previous model");
                Err(error)
            }
        }
    }

    /// Loads and checks on the blocking pool, waiting at most the reload timeout. The lock
    /// goes with the load, not with this wait.
    async fn load_checked(
        &self,
        previous: &Served,
        one_at_a_time: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<LoadedBackend, ReloadError> {
        let reloader = self.reloader.clone().ok_or(ReloadError::NotConfigured)?;
        let labels = previous.backend.labels().to_vec();
        let job = move || {
            let _held = one_at_a_time;
            let loaded = reloader().map_err(ReloadError::Load)?;
            check(loaded.backend.as_ref(), &labels).map_err(ReloadError::Invalid)?;
            Ok(loaded)
        };
        match tokio::time::timeout(self.reload_timeout, tokio::task::spawn_blocking(job)).await {
            Ok(joined) => joined.map_err(|e| ReloadError::Load(format!("the loader panicked: {e}")))?,
            Err(_) => Err(ReloadError::TimedOut(self.reload_timeout)),
        }
    }
}

/// A new model must answer for the same labels, with one finite probability per label
/// summing to 1.
pub fn check(backend: &dyn Backend, labels: &[String]) -> Result<(), String> {
    if backend.labels() != labels {
        return Err(format!("labels {:?}, but this worker serves {labels:?}", backend.labels()));
    }
    let answers = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        backend.predict_batch(&["smoke test: a perfectly ordinary sentence"])
    }))
    .map_err(|_| "the smoke prediction panicked".to_owned())?
    .map_err(|e| format!("the smoke prediction failed: {e}"))?;
    let [answer] = answers.as_slice() else {
        return Err(format!("{} answers to one smoke text", answers.len()));
    };
    let sum: f64 = answer.probabilities.iter().sum();
    if answer.probabilities.len() != labels.len()
        || answer.probabilities.iter().any(|p| !p.is_finite() || !(0.0..=1.0).contains(p))
        || (sum - 1.0).abs() > 1e-3
    {
        return Err(format!("the smoke prediction's probabilities are not a distribution: {:?}", answer.probabilities));
    }
    Ok(())
}

/// A text the live model answered, for the candidate to score.
struct Sample {
    text: String,
    live_label: String,
}

/// A candidate model scoring a sample of live traffic on its own thread. Dropping it
/// stops and joins the thread.
pub struct Shadow {
    tx: Option<SyncSender<Sample>>,
    thread: Option<JoinHandle<()>>,
    /// Fraction of requests sampled, as a fixed stride: exact at any rate, no RNG.
    rate: f64,
    seen: AtomicU64,
}

/// Samples waiting for the candidate; beyond it they are dropped (and counted), never
/// queued without bound.
const SHADOW_QUEUE: usize = 1024;

impl Shadow {
    /// Starts the candidate's thread.
    pub fn start(backend: Arc<dyn Backend>, source: &str, rate: f64) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Sample>(SHADOW_QUEUE);
        tracing::info!(
            model_path = source,
            model_version = backend.model_version(),
            sample_rate = rate,
            "Shadow model loaded"
        );
        metrics::register_shadow(backend.labels());
        let thread = std::thread::Builder::new().name("shadow-model".into()).spawn(move || {
            // Below the request threads: the candidate only ever gets spare CPU.
            crate::adapters::request_log::lower_priority(crate::adapters::request_log::WriterPriority::Nice(10));
            run_shadow(&rx, backend.as_ref());
        })?;
        Ok(Self { tx: Some(tx), thread: Some(thread), rate: rate.clamp(0.0, 1.0), seen: AtomicU64::new(0) })
    }

    /// Whether this request is in the sample (the caller then keeps a copy of its text).
    pub fn sampled(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.rate).floor() > (n * self.rate).floor()
    }

    /// Hands a sampled text and the live answer to the candidate. Never waits.
    pub fn score(&self, text: String, live_label: &str) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Sample { text, live_label: live_label.to_owned() }) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => metrics::record_shadow_dropped(),
        }
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_shadow(rx: &Receiver<Sample>, backend: &dyn Backend) {
    while let Ok(sample) = rx.recv() {
        let started = Instant::now();
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.predict_batch(&[&sample.text])));
        let elapsed = started.elapsed();
        match answer {
            Ok(Ok(predictions)) if predictions.len() == 1 => {
                let Some(label) = backend.labels().get(predictions[0].class) else { continue };
                metrics::record_shadow(label, *label == sample.live_label, elapsed);
            }
            _ => metrics::record_shadow_error(),
        }
    }
}

#[cfg(test)]
mod tests {
    use falcon_backend::{BackendError, Prediction};

    use super::*;

    struct Fixed {
        version: &'static str,
        labels: Vec<String>,
        probabilities: Vec<f64>,
    }

    impl Backend for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn predict_batch(&self, texts: &[&str]) -> Result<Vec<Prediction>, BackendError> {
            Ok(texts.iter().map(|_| Prediction::from_probabilities(self.probabilities.clone())).collect())
        }
        fn labels(&self) -> &[String] {
            &self.labels
        }
        fn model_version(&self) -> &str {
            self.version
        }
        fn normalize(&self, text: &str) -> String {
            text.to_owned()
        }
        fn max_input_chars(&self) -> usize {
            100
        }
    }

    fn fixed(version: &'static str, labels: &[&str], probabilities: &[f64]) -> Arc<dyn Backend> {
        Arc::new(Fixed {
            version,
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            probabilities: probabilities.to_vec(),
        })
    }

    fn slot_reloading(next: Arc<dyn Backend>) -> ModelSlot {
        let reloader: Reloader = Arc::new(move || {
            Ok(LoadedBackend { backend: Arc::clone(&next), source: "next.bin".into(), load_time: Duration::ZERO })
        });
        ModelSlot::new(fixed("v1", &["a", "b"], &[0.2, 0.8]), "first.bin".into(), Some(reloader))
    }

    #[tokio::test]
    async fn a_good_model_is_swapped_in_and_a_snapshot_keeps_the_old_one() {
        let slot = slot_reloading(fixed("v2", &["a", "b"], &[0.6, 0.4]));
        let before = slot.current();
        let r = slot.reload("test").await.unwrap();
        assert_eq!((r.previous_version.as_str(), r.model_version.as_str(), r.changed), ("v1", "v2", true));
        assert_eq!(slot.current().model_version(), "v2");
        assert_eq!(slot.source(), "next.bin");
        assert_eq!(before.model_version(), "v1", "a request's snapshot is not changed under it");
    }

    #[tokio::test]
    async fn a_bad_model_is_refused_and_the_old_one_stays() {
        for (bad, why) in [
            (fixed("v2", &["x", "y"], &[0.5, 0.5]), "labels"),
            (fixed("v2", &["a", "b"], &[0.5, 0.7]), "not a distribution"),
            (fixed("v2", &["a", "b"], &[f64::NAN, 1.0]), "not a distribution"),
        ] {
            let slot = slot_reloading(bad);
            let e = slot.reload("test").await.unwrap_err();
            assert!(matches!(&e, ReloadError::Invalid(m) if m.contains(why)), "{e}");
            assert_eq!(slot.current().model_version(), "v1");
        }
        let unloadable: Reloader = Arc::new(|| Err("no such file".into()));
        let slot = ModelSlot::new(fixed("v1", &["a", "b"], &[0.2, 0.8]), "first.bin".into(), Some(unloadable));
        assert_eq!(slot.reload("test").await, Err(ReloadError::Load("no such file".into())));
        let fixed_slot = ModelSlot::new(fixed("v1", &["a", "b"], &[0.2, 0.8]), "built-in".into(), None);
        assert_eq!(fixed_slot.reload("test").await, Err(ReloadError::NotConfigured));
    }

    #[tokio::test]
    async fn a_hung_load_is_abandoned_after_the_timeout_and_blocks_no_second_thread() {
        let release = Arc::new(std::sync::Barrier::new(2));
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r, n) = (Arc::clone(&release), Arc::clone(&loads));
        let hangs: Reloader = Arc::new(move || {
            // The first load hangs until released, as a read from a hung file system would.
            if n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                r.wait();
            }
            Ok(LoadedBackend {
                backend: fixed("v2", &["a", "b"], &[0.6, 0.4]),
                source: "next.bin".into(),
                load_time: Duration::ZERO,
            })
        });
        let slot = ModelSlot::new(fixed("v1", &["a", "b"], &[0.2, 0.8]), "first.bin".into(), Some(hangs))
            .with_reload_timeout(Duration::from_millis(100));
        assert_eq!(slot.reload("test").await, Err(ReloadError::TimedOut(Duration::from_millis(100))));
        assert_eq!(slot.reload("test").await, Err(ReloadError::InProgress), "single flight while the load hangs");
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1, "no second thread was sent to hang");
        assert_eq!(slot.current().model_version(), "v1");
        // Once the hung load ends, reloads work again.
        tokio::task::spawn_blocking(move || release.wait()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match slot.reload("test").await {
                Ok(r) => break assert_eq!(r.model_version, "v2"),
                Err(ReloadError::InProgress) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn the_sample_is_an_exact_stride() {
        let shadow = Shadow::start(fixed("c", &["a", "b"], &[0.5, 0.5]), "c.bin", 0.25).unwrap();
        let picked = (0..1000).filter(|_| shadow.sampled()).count();
        assert_eq!(picked, 250);
        let none = Shadow::start(fixed("c", &["a", "b"], &[0.5, 0.5]), "c.bin", 0.0).unwrap();
        assert_eq!((0..100).filter(|_| none.sampled()).count(), 0);
        let all = Shadow::start(fixed("c", &["a", "b"], &[0.5, 0.5]), "c.bin", 1.0).unwrap();
        assert_eq!((0..100).filter(|_| all.sampled()).count(), 100);
    }
}
