//! The models a worker serves now, by name: each with its own slot (hot reload), its own
//! bounded inference queue and threads (a slow or saturated model never delays another), its
//! prediction metrics and its statistics.
//!
//! The map sits behind an `ArcSwap`: a request takes its model's `Arc` once and finishes on
//! it, so loading or unloading a model never disturbs a request already running. Loads and
//! unloads are one at a time; a load runs off the request path, on the blocking pool, within
//! `MODEL_RELOAD_TIMEOUT_SECONDS`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use falcon_backend::Backend;

use super::repository::{ModelSpec, Repository};
use super::stats::ModelStats;
use crate::adapters::inference::{Batching, InferenceQueue};
use crate::error_type::shown;
use crate::lifecycle::{self, LoadedBackend, ModelSlot, ReloadError, Reloaded, Reloader};
use crate::pipeline::InferError;
use crate::telemetry::metrics::{PredictionMetrics, RequestMetrics};

/// Loads one model of the repository; the `falcon` binary provides it, since only it knows
/// the concrete backends.
pub type ModelLoader = Arc<dyn Fn(&ModelSpec) -> Result<LoadedBackend, String> + Send + Sync>;

/// How each model's inference threads are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueShape {
    pub threads: usize,
    /// Requests that may wait for a thread; beyond it, 503 `overloaded`.
    pub capacity: usize,
    /// The most texts one model call gets (`MAX_BATCH_SIZE`).
    pub max_batch: usize,
    /// How long a thread waits to fill a batch for a backend that prefers batches
    /// (`MAX_BATCH_WAIT_MS`); other backends never wait.
    pub max_wait: Duration,
}

/// One model being served.
pub struct ServedModel {
    name: Arc<str>,
    slot: Arc<ModelSlot>,
    queue: InferenceQueue,
    predictions: PredictionMetrics,
    requests: RequestMetrics,
}

impl ServedModel {
    fn start(name: &str, slot: ModelSlot, shape: QueueShape) -> std::io::Result<Self> {
        let max_wait = if slot.current().prefers_batches() { shape.max_wait } else { Duration::ZERO };
        let batching = Batching { max_batch: shape.max_batch, max_wait };
        let queue = InferenceQueue::start(name, shape.threads, shape.capacity, batching)?;
        let predictions = PredictionMetrics::new(name, slot.current().labels());
        let requests = RequestMetrics::new(name);
        Ok(Self { name: Arc::from(name), slot: Arc::new(slot), queue, predictions, requests })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The model to use for one whole request (a reload does not change it under you).
    pub fn current(&self) -> Arc<dyn Backend> {
        self.slot.current()
    }

    /// Its slot: hot reload goes through it.
    pub fn slot(&self) -> &Arc<ModelSlot> {
        &self.slot
    }

    pub fn queue(&self) -> &InferenceQueue {
        &self.queue
    }

    pub fn predictions(&self) -> &PredictionMetrics {
        &self.predictions
    }

    /// Its `inference_requests_total` and `inference_duration_seconds` series.
    pub fn requests(&self) -> &RequestMetrics {
        &self.requests
    }

    pub fn stats(&self) -> &ModelStats {
        self.queue.stats()
    }
}

/// A repository model's state, for the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    /// The version served; `None` when it is not loaded.
    pub version: Option<String>,
    pub ready: bool,
    /// Why it is not ready (empty when it is).
    pub reason: String,
}

/// What a load did.
#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    /// It was not served; now it is.
    Started { model_version: String, load_ms: f64 },
    /// It was served; it has been reloaded.
    Reloaded(Reloaded),
}

/// Where models come from: the repository file (read again at each load and reload) or the
/// zero-config repository, and the binary's loader.
struct Source {
    fixed: Repository,
    backends: Vec<String>,
    loader: Option<ModelLoader>,
}

impl Source {
    fn file(&self) -> Option<&PathBuf> {
        self.fixed.file.as_ref()
    }

    /// The repository as it is now: its file read again, or the zero-config one.
    fn read(&self) -> Result<Repository, String> {
        match self.file() {
            Some(file) => {
                let backends: Vec<&str> = self.backends.iter().map(String::as_str).collect();
                Repository::read(file, &backends).map_err(|e| e.to_string())
            }
            None => Ok(self.fixed.clone()),
        }
    }

    /// Loads `name` as the repository describes it now.
    fn load(&self, name: &str) -> Result<LoadedBackend, String> {
        let repository = self.read()?;
        let spec = repository
            .models
            .get(name)
            .ok_or_else(|| format!("model {name:?} is no longer in the model repository {}", repository.source()))?;
        self.load_spec(spec)
    }

    /// Loads the model `spec` describes.
    fn load_spec(&self, spec: &ModelSpec) -> Result<LoadedBackend, String> {
        let loader = self.loader.as_ref().ok_or("this worker cannot load models (no loader configured)")?;
        loader(spec)
    }
}

/// The models a worker serves, by name.
pub struct Registry {
    default: Arc<ServedModel>,
    served: ArcSwap<BTreeMap<Arc<str>, Arc<ServedModel>>>,
    source: Arc<Source>,
    shape: QueueShape,
    reload_timeout: Duration,
    /// One load or unload at a time.
    changing: tokio::sync::Mutex<()>,
}

impl Registry {
    /// Serves `loaded` (one loaded model per repository model). `loader` loads them again
    /// (reload, the repository's load); `backends` are the backends this build knows.
    pub fn start(
        repository: Repository,
        mut loaded: BTreeMap<String, LoadedBackend>,
        loader: Option<ModelLoader>,
        backends: Vec<String>,
        shape: QueueShape,
        reload_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let source = Arc::new(Source { fixed: repository.clone(), backends, loader });
        let mut served = BTreeMap::new();
        for name in repository.models.keys() {
            let model = loaded
                .remove(name)
                .ok_or_else(|| anyhow::anyhow!("model {name:?} of {} was not loaded", repository.source()))?;
            let is_default = *name == repository.default;
            let reloader = source.loader.is_some().then(|| reloader(&source, name));
            let slot = ModelSlot::serving(name, is_default, model.backend, model.source, reloader)
                .with_reload_timeout(reload_timeout);
            let model = ServedModel::start(name, slot, shape)
                .map_err(|e| anyhow::anyhow!("cannot start the inference threads of model {name:?}: {e}"))?;
            served.insert(Arc::clone(model.name()), Arc::new(model));
        }
        let default = served
            .get(repository.default.as_str())
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("the default model {:?} is not among the models", repository.default))?;
        Ok(Self {
            default,
            served: ArcSwap::from_pointee(served),
            source,
            shape,
            reload_timeout,
            changing: tokio::sync::Mutex::new(()),
        })
    }

    /// The model a request that names none gets.
    pub fn default_model(&self) -> &Arc<ServedModel> {
        &self.default
    }

    /// The model `name` names (`None`: the default), if it is served.
    pub fn get(&self, name: Option<&str>) -> Result<Arc<ServedModel>, InferError> {
        let Some(name) = name else { return Ok(Arc::clone(&self.default)) };
        if *name == *self.default.name {
            return Ok(Arc::clone(&self.default));
        }
        let served = self.served.load();
        served.get(name).cloned().ok_or_else(|| not_found(name, served.keys().map(|k| k.as_ref())))
    }

    /// Every model served now, by name.
    pub fn served(&self) -> Vec<Arc<ServedModel>> {
        self.served.load().values().cloned().collect()
    }

    /// Every model of the repository (its file read again) and of this worker, with its
    /// state.
    pub fn index(&self) -> Vec<IndexEntry> {
        let served = self.served.load_full();
        let (known, unreadable) = match self.source.read() {
            Ok(r) => (r.models.into_keys().collect::<Vec<_>>(), None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let mut names: Vec<String> = served.keys().map(|k| k.to_string()).chain(known).collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .map(|name| match served.get(name.as_str()) {
                Some(m) => IndexEntry {
                    version: Some(m.current().model_version().to_owned()),
                    ready: true,
                    reason: String::new(),
                    name,
                },
                None => IndexEntry {
                    reason: unreadable.clone().unwrap_or_else(|| "unloaded".to_owned()),
                    version: None,
                    ready: false,
                    name,
                },
            })
            .collect()
    }

    /// Loads `name` from the repository file: starts serving it, or reloads it (checked, as
    /// a hot reload is) when it is served already.
    pub async fn load(&self, name: &str, trigger: &'static str) -> Result<Loaded, ModelChangeError> {
        let _one_at_a_time = self.changing.lock().await;
        if let Ok(model) = self.get(Some(name)) {
            return Ok(Loaded::Reloaded(model.slot.reload(trigger).await?));
        }
        let repository = self.read_repository().await?;
        let Some(spec) = repository.models.get(name).cloned() else {
            return Err(ModelChangeError::Refused(not_found(name, repository.models.keys().map(String::as_str))));
        };
        // The file as just read: loaded from the description the check above saw.
        let source = Arc::clone(&self.source);
        let job = move || {
            let loaded = source.load_spec(&spec).map_err(ReloadError::Load)?;
            let labels = loaded.backend.labels().to_vec();
            lifecycle::check(loaded.backend.as_ref(), &labels).map_err(ReloadError::Invalid)?;
            Ok::<_, ReloadError>(loaded)
        };
        let loaded = match tokio::time::timeout(self.reload_timeout, tokio::task::spawn_blocking(job)).await {
            Ok(Ok(loaded)) => loaded?,
            Ok(Err(e)) => return Err(ReloadError::Load(format!("the loader panicked: {e}")).into()),
            Err(_) => return Err(ReloadError::TimedOut(self.reload_timeout).into()),
        };
        let model_version = loaded.backend.model_version().to_owned();
        let load_ms = loaded.load_time.as_secs_f64() * 1000.0;
        let reload = Some(reloader(&self.source, name));
        let slot = ModelSlot::serving(name, false, loaded.backend, loaded.source.clone(), reload)
            .with_reload_timeout(self.reload_timeout);
        let model = ServedModel::start(name, slot, self.shape)
            .map_err(|e| ReloadError::Load(format!("cannot start its inference threads: {e}")))?;
        let model = Arc::new(model);
        self.served.rcu(|served| {
            let mut next = BTreeMap::clone(served);
            next.insert(Arc::clone(model.name()), Arc::clone(&model));
            next
        });
        tracing::info!(trigger, model = name, model_version, model_path = %loaded.source, load_ms, "Model loaded");
        Ok(Loaded::Started { model_version, load_ms })
    }

    /// Stops serving `name`: requests already running on it finish; new ones get 404. The
    /// default model cannot be unloaded. False when it was not served.
    pub async fn unload(&self, name: &str, trigger: &'static str) -> Result<bool, ModelChangeError> {
        let _one_at_a_time = self.changing.lock().await;
        if *name == *self.default.name {
            return Err(ModelChangeError::Refused(InferError::DefaultModel(name.to_owned())));
        }
        let mut removed = None;
        self.served.rcu(|served| {
            let mut next = BTreeMap::clone(served);
            removed = next.remove(name);
            next
        });
        if let Some(model) = removed {
            let version = model.current().model_version().to_owned();
            crate::telemetry::metrics::record_model_unloaded(name, &version);
            tracing::info!(trigger, model = name, model_version = version, "Model unloaded");
            return Ok(true);
        }
        match self.read_repository().await {
            Ok(r) if r.models.contains_key(name) => Ok(false),
            _ => Err(ModelChangeError::Refused(not_found(name, self.served.load().keys().map(|k| k.as_ref())))),
        }
    }

    /// The repository file read again, off the runtime threads and within the reload timeout
    /// (a hung file system holds a blocking thread, never a request).
    async fn read_repository(&self) -> Result<Repository, ReloadError> {
        let source = Arc::clone(&self.source);
        match tokio::time::timeout(self.reload_timeout, tokio::task::spawn_blocking(move || source.read())).await {
            Ok(Ok(read)) => read.map_err(ReloadError::Load),
            Ok(Err(e)) => Err(ReloadError::Load(format!("reading the repository panicked: {e}"))),
            Err(_) => Err(ReloadError::TimedOut(self.reload_timeout)),
        }
    }

    /// Reloads every served model (SIGHUP): each that fails keeps its old version.
    pub async fn reload_all(&self, trigger: &'static str) -> Vec<(Arc<str>, Result<Reloaded, ReloadError>)> {
        let mut outcomes = Vec::new();
        for model in self.served() {
            outcomes.push((Arc::clone(model.name()), model.slot.reload(trigger).await));
        }
        outcomes
    }
}

/// Why a load or an unload changed nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelChangeError {
    /// No such model, or the default one (unloading it): the request's own error.
    #[error(transparent)]
    Refused(InferError),
    #[error(transparent)]
    Load(#[from] ReloadError),
}

/// `model_not_found` for `name` (as shown to a client), listing `known`.
fn not_found<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> InferError {
    InferError::ModelNotFound { name: shown(name), served: known.collect::<Vec<_>>().join(", ") }
}

/// Reloads `name` as the repository describes it when the reload runs.
fn reloader(source: &Arc<Source>, name: &str) -> Reloader {
    let source = Arc::clone(source);
    let name = name.to_owned();
    Arc::new(move || source.load(&name))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use falcon_backend::{BackendError, Prediction};

    use super::*;

    /// A model whose version is where it was loaded from.
    struct Named(String, Vec<String>);

    impl Backend for Named {
        fn name(&self) -> &'static str {
            "named"
        }
        fn predict_batch(&self, texts: &[&str]) -> Result<Vec<Prediction>, BackendError> {
            Ok(texts.iter().map(|_| Prediction::from_probabilities(vec![0.25, 0.75])).collect())
        }
        fn labels(&self) -> &[String] {
            &self.1
        }
        fn model_version(&self) -> &str {
            &self.0
        }
        fn normalize(&self, text: &str) -> String {
            text.to_owned()
        }
        fn max_input_chars(&self) -> usize {
            100
        }
    }

    /// Loads `Named(path)`; a path named `broken` does not load.
    fn load(spec: &ModelSpec) -> Result<LoadedBackend, String> {
        let at =
            spec.location.as_ref().map_or("built-in".to_owned(), |p| p.file_name().unwrap().to_string_lossy().into());
        if at == "broken" {
            return Err("corrupt".into());
        }
        let backend: Arc<dyn Backend> = Arc::new(Named(at.clone(), vec!["no".into(), "yes".into()]));
        Ok(LoadedBackend { backend, source: at, load_time: Duration::ZERO })
    }

    fn write(file: &std::path::Path, b_path: &str) {
        let text = format!(
            "default = \"a\"\n[models.a]\nbackend = \"named\"\n[models.b]\nbackend = \"named\"\npath = \"{b_path}\"\n"
        );
        std::fs::write(file, text).unwrap();
    }

    fn registry(file: &std::path::Path) -> Registry {
        let repository = Repository::read(file, &["named"]).unwrap();
        let loaded = repository.models.iter().map(|(n, spec)| (n.clone(), load(spec).unwrap())).collect();
        let shape = QueueShape { threads: 1, capacity: 4, max_batch: 4, max_wait: Duration::ZERO };
        Registry::start(repository, loaded, Some(Arc::new(load)), vec!["named".into()], shape, Duration::from_secs(5))
            .unwrap()
    }

    #[tokio::test]
    async fn models_are_found_by_name_unloaded_loaded_and_reloaded_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("models.toml");
        write(&file, "b1");
        let r = registry(&file);
        assert_eq!(&**r.get(None).unwrap().name(), "a");
        assert_eq!(r.get(Some("b")).unwrap().current().model_version(), "b1");
        let unknown = r.get(Some("c")).err().unwrap();
        assert_eq!(unknown.to_string(), "unknown model 'c'; this worker serves: a, b");

        // A request holding `b` finishes on it after the unload; new ones get 404.
        let held = r.get(Some("b")).unwrap();
        assert_eq!(r.unload("b", "test").await, Ok(true));
        assert_eq!(r.unload("b", "test").await, Ok(false), "not loaded: nothing to do");
        assert!(r.get(Some("b")).is_err());
        let answer = held.queue().predict(&held.current(), "still here".into(), Duration::from_secs(5)).await;
        assert!(answer.is_ok(), "{answer:?}");
        drop(held);
        let index = r.index();
        assert_eq!(index[1], IndexEntry { name: "b".into(), version: None, ready: false, reason: "unloaded".into() });

        // A load reads the file again.
        write(&file, "b2");
        assert!(
            matches!(r.load("b", "test").await, Ok(Loaded::Started { model_version, .. }) if model_version == "b2")
        );
        assert!(matches!(r.load("b", "test").await, Ok(Loaded::Reloaded(Reloaded { changed: false, .. }))));

        // A reload that fails keeps that model's version; the others reload.
        write(&file, "broken");
        let outcomes = r.reload_all("test").await;
        assert!(outcomes.iter().any(|(n, o)| &**n == "a" && o.is_ok()), "{outcomes:?}");
        assert!(outcomes.iter().any(|(n, o)| &**n == "b" && o.is_err()), "{outcomes:?}");
        assert_eq!(r.get(Some("b")).unwrap().current().model_version(), "b2");

        // The default cannot go; an unknown name is not found either way.
        assert!(matches!(r.unload("a", "test").await, Err(ModelChangeError::Refused(InferError::DefaultModel(_)))));
        let unknown = |e| matches!(e, Err(ModelChangeError::Refused(InferError::ModelNotFound { .. })));
        assert!(unknown(r.unload("zzz", "test").await));
        assert!(unknown(r.load("zzz", "test").await.map(|_| true)));
    }
}
