//! Model inference off the async reactor: a bounded queue drained by dedicated threads.
//!
//! Each thread takes one job, then whatever else is already waiting (up to `max_batch`
//! texts), and runs them through the backend as one `predict_batch` call before it sleeps
//! again. For a backend whose batched call costs far less per text than single ones (a
//! transformer's forward pass, `Backend::prefers_batches`), the thread also waits up to
//! `max_wait` (`MAX_BATCH_WAIT_MS`) for more texts to arrive before it runs the batch.
//! Each job names its model (the one its request took a snapshot of), so a hot reload
//! never answers a request with another model than the one it started with.
//! Under load one wake-up serves many requests; with `spawn_blocking` every request paid a
//! thread hand-off, which cost more CPU than the model itself (see docs/benchmarks.md). A
//! full queue is refused at once, never buffered without bound.
//!
//! A text the backend calls cheap (`Backend::runs_in_place`: the TF-IDF model's few
//! microseconds) skips the hand-off when no request is queued: it runs on the runtime
//! thread that holds the request. At low load that saves the queue, two wake-ups and the
//! reply for each request; under load the queue is rarely empty, and batching takes over.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use falcon_backend::{Backend, BackendError, Prediction};
use tokio::sync::oneshot;

use crate::models::ModelStats;
use crate::telemetry::metrics;

/// Why the queue gave no prediction.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueueError {
    #[error("inference queue is full")]
    Full,
    #[error("inference threads stopped")]
    Stopped,
    #[error("inference did not finish within {0:?}")]
    Timeout(Duration),
    #[error("model panicked on this input")]
    Panicked,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

type Reply = oneshot::Sender<Result<Prediction, BackendError>>;
type Replies = oneshot::Sender<Vec<Result<Prediction, BackendError>>>;

/// One request's texts: a single text, or a batch request's texts (answered together).
enum Work {
    One { text: String, reply: Reply },
    Many { texts: Vec<String>, reply: Replies },
}

struct Job {
    work: Work,
    backend: Arc<dyn Backend>,
    /// When it was queued, for the model's queue time.
    queued_at: Instant,
}

impl Job {
    fn texts(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match &self.work {
            Work::One { text, .. } => (Some(text.as_str()), None),
            Work::Many { texts, .. } => (None, Some(texts.iter().map(String::as_str))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    fn len(&self) -> usize {
        match &self.work {
            Work::One { .. } => 1,
            Work::Many { texts, .. } => texts.len(),
        }
    }

    /// The request gave up (timed out, went away): nothing to compute.
    fn abandoned(&self) -> bool {
        match &self.work {
            Work::One { reply, .. } => reply.is_closed(),
            Work::Many { reply, .. } => reply.is_closed(),
        }
    }
}

/// Handle to the inference threads. Dropping it stops and joins them.
pub struct InferenceQueue {
    tx: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    max_batch: usize,
    max_wait: Duration,
    /// Jobs sent and not yet taken by a thread.
    queued: Arc<AtomicUsize>,
    /// The model's statistics: queue and compute time, texts and calls.
    stats: Arc<ModelStats>,
    /// `model_inference_batch_size{model}`.
    batch_size: ::metrics::Histogram,
}

/// How a queue's threads gather a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// The most texts one `predict_batch` call gets (`MAX_BATCH_SIZE`).
    pub max_batch: usize,
    /// How long a thread holding fewer texts waits for more before it runs them
    /// (`MAX_BATCH_WAIT_MS`); zero: it runs what is already queued at once.
    pub max_wait: Duration,
}

impl InferenceQueue {
    /// Starts `threads` inference threads sharing a queue of `capacity` jobs, for the model
    /// named `model` (its metrics' label).
    pub fn start(model: &str, threads: usize, capacity: usize, batching: Batching) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Job>(capacity.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let queued = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(ModelStats::default());
        let batch_size = metrics::batch_size(model);
        let batching = Batching { max_batch: batching.max_batch.max(1), ..batching };
        let threads = (0..threads.max(1))
            .map(|i| {
                let rx = Arc::clone(&rx);
                let counted = Counted {
                    queued: Arc::clone(&queued),
                    stats: Arc::clone(&stats),
                    batch_size: batch_size.clone(),
                    queue_wait: metrics::queue_wait(model),
                    forward: metrics::forward_time(model),
                };
                std::thread::Builder::new()
                    .name(format!("inference-{i}"))
                    .spawn(move || run_thread(&rx, &counted, batching))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let (max_batch, max_wait) = (batching.max_batch, batching.max_wait);
        Ok(Self { tx: Some(tx), threads, max_batch, max_wait, queued, stats, batch_size })
    }

    /// The statistics of the model this queue serves.
    pub fn stats(&self) -> &Arc<ModelStats> {
        &self.stats
    }

    /// How many threads run the model, and the most texts one runs in a call.
    pub fn shape(&self) -> (usize, usize) {
        (self.threads.len(), self.max_batch)
    }

    /// How long a thread waits to fill a batch.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// Classifies `text` with `backend`, waiting at most `timeout` for the answer.
    pub async fn predict(
        &self,
        backend: &Arc<dyn Backend>,
        text: String,
        timeout: Duration,
    ) -> Result<Prediction, QueueError> {
        if timeout >= IN_PLACE_MIN_DEADLINE && self.queued.load(Ordering::Relaxed) == 0 && backend.runs_in_place(&text)
        {
            let started = Instant::now();
            let answer = run_in_place(backend.as_ref(), &text);
            let took = started.elapsed();
            // As a thread's batch of one: the histogram's sum stays the texts classified.
            self.batch_size.record(1.0);
            self.stats.queue.add(1, Duration::ZERO);
            self.stats.record_execution(1, 1, took);
            // Past the deadline is past the deadline, wherever the text ran.
            if took > timeout {
                return Err(QueueError::Timeout(timeout));
            }
            return answer;
        }
        let (reply, answer) = oneshot::channel();
        let job = Job { work: Work::One { text, reply }, backend: Arc::clone(backend), queued_at: Instant::now() };
        Ok(self.submit(job, answer, timeout).await??)
    }

    /// Classifies `texts` with `backend` in one `predict_batch` call (with whatever else is
    /// queued), waiting at most `timeout`; one answer per text, in order. If the model
    /// fails on the batch, each text is run alone, so one bad text fails only itself.
    pub async fn predict_many(
        &self,
        backend: &Arc<dyn Backend>,
        texts: Vec<String>,
        timeout: Duration,
    ) -> Result<Vec<Result<Prediction, BackendError>>, QueueError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let job = Job { work: Work::Many { texts, reply }, backend: Arc::clone(backend), queued_at: Instant::now() };
        self.submit(job, answer, timeout).await
    }

    /// Queues `job` (refused at once when the queue is full) and waits at most `timeout`
    /// for its answer.
    async fn submit<T>(&self, job: Job, answer: oneshot::Receiver<T>, timeout: Duration) -> Result<T, QueueError> {
        let tx = self.tx.as_ref().ok_or(QueueError::Stopped)?;
        // Counted before the send, so a thread never takes a job it has not seen counted.
        self.queued.fetch_add(1, Ordering::Relaxed);
        let sent = tx.try_send(job);
        if sent.is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(QueueError::Full),
            Err(TrySendError::Disconnected(_)) => return Err(QueueError::Stopped),
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            // The thread dropped the reply: the model panicked on this input.
            Ok(Err(_)) => Err(QueueError::Panicked),
            Err(_) => Err(QueueError::Timeout(timeout)),
        }
    }
}

impl Drop for InferenceQueue {
    fn drop(&mut self) {
        // Closing the queue ends each thread's loop once the queued jobs are answered.
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A text runs in place only under a deadline of at least this: a cheap text takes tens of
/// microseconds, and a shorter deadline (a test's, a drill's) is bounded by the inference
/// threads' wait, not by running to completion.
const IN_PLACE_MIN_DEADLINE: Duration = Duration::from_millis(1);

/// Polls before sleeping: under load the next job is microseconds away, and catching it
/// while awake saves the futex sleep and wake-up that otherwise dominate the hand-off.
/// `yield_now` keeps the poll from starving the runtime threads on small machines.
const POLLS_BEFORE_SLEEP: usize = 64;

/// The next job, or `None` once the queue is closed.
fn next_job(rx: &Receiver<Job>) -> Option<Job> {
    for _ in 0..POLLS_BEFORE_SLEEP {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(TryRecvError::Empty) => std::thread::yield_now(),
            Err(TryRecvError::Disconnected) => return None,
        }
    }
    rx.recv().ok()
}

/// What a thread counts: the jobs still queued, the model's statistics, batch sizes, each
/// request's wait in the queue and each call's time in the model.
struct Counted {
    queued: Arc<AtomicUsize>,
    stats: Arc<ModelStats>,
    batch_size: ::metrics::Histogram,
    queue_wait: ::metrics::Histogram,
    forward: ::metrics::Histogram,
}

fn run_thread(rx: &Mutex<Receiver<Job>>, counted: &Counted, batching: Batching) {
    let Counted { queued, stats, batch_size, queue_wait, forward } = counted;
    let mut batch = Vec::with_capacity(batching.max_batch.min(256));
    loop {
        let texts = {
            // One thread waits in recv while the others wait for the lock: same effect
            // as a multi-consumer channel, with only std.
            let Ok(rx) = rx.lock() else { return };
            match next_job(&rx) {
                Some(job) => batch.push(job),
                None => return,
            }
            gather(&rx, &mut batch, batching)
        };
        queued.fetch_sub(batch.len(), Ordering::Relaxed);
        batch_size.record(texts as f64);
        let taken = Instant::now();
        for job in &batch {
            let waited = taken.saturating_duration_since(job.queued_at);
            stats.queue.add(1, waited);
            queue_wait.record(waited.as_secs_f64());
        }
        // Requests that already timed out or went away are not computed.
        batch.retain(|job| !job.abandoned());
        run_by_model(&mut batch, stats, forward);
    }
}

/// Adds queued jobs to `batch` (which holds the first) until it has `max_batch` texts: the
/// ones already waiting, then, within `max_wait` of the first, the ones that arrive. A job
/// is never split, so a batch request may take a batch past `max_batch`. Returns the texts.
fn gather(rx: &Receiver<Job>, batch: &mut Vec<Job>, batching: Batching) -> usize {
    let mut texts: usize = batch.iter().map(Job::len).sum();
    let deadline = Instant::now() + batching.max_wait;
    while texts < batching.max_batch {
        let next = match rx.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left) {
                    Ok(job) => job,
                    Err(_) => break,
                }
            }
        };
        texts += next.len();
        batch.push(next);
    }
    texts
}

/// One `predict_batch` call per model in the batch: one, except around a hot reload.
fn run_by_model(batch: &mut Vec<Job>, stats: &ModelStats, forward: &::metrics::Histogram) {
    while let Some(first) = batch.first() {
        let backend = Arc::clone(&first.backend);
        if batch.iter().all(|j| Arc::ptr_eq(&j.backend, &backend)) {
            run_timed(backend.as_ref(), batch, stats, forward);
            return;
        }
        let (mut same, rest): (Vec<Job>, Vec<Job>) = batch.drain(..).partition(|j| Arc::ptr_eq(&j.backend, &backend));
        *batch = rest;
        run_timed(backend.as_ref(), &mut same, stats, forward);
    }
}

/// `run_batch`, counted in the model's statistics and `model_forward_seconds`.
fn run_timed(backend: &dyn Backend, batch: &mut Vec<Job>, stats: &ModelStats, forward: &::metrics::Histogram) {
    if batch.is_empty() {
        return;
    }
    let (texts, requests) = (batch.iter().map(Job::len).sum(), batch.len());
    let started = Instant::now();
    run_batch(backend, batch);
    let took = started.elapsed();
    forward.record(took.as_secs_f64());
    stats.record_execution(texts, requests, took);
}

/// One `predict_batch` call for every text of the batch. If it fails as a whole (or
/// panics), each job is run alone, and a batch request's texts each alone, so one bad input
/// fails only its own answer.
fn run_batch(backend: &dyn Backend, batch: &mut Vec<Job>) {
    if batch.is_empty() {
        return;
    }
    let texts: Vec<&str> = batch.iter().flat_map(Job::texts).collect();
    let n = texts.len();
    let answers = std::panic::catch_unwind(AssertUnwindSafe(|| backend.predict_batch(&texts)));
    drop(texts);
    match answers {
        Ok(Ok(predictions)) if predictions.len() == n => {
            let mut predictions = predictions.into_iter();
            for job in batch.drain(..) {
                match job.work {
                    Work::One { reply, .. } => {
                        if let Some(p) = predictions.next() {
                            let _ = reply.send(Ok(p));
                        }
                    }
                    Work::Many { texts, reply } => {
                        let _ = reply.send(predictions.by_ref().take(texts.len()).map(Ok).collect());
                    }
                }
            }
        }
        _ if n > 1 => {
            for job in batch.drain(..) {
                match job.work {
                    Work::Many { texts, reply } => {
                        let _ = reply.send(texts.iter().map(|t| run_alone(backend, t)).collect());
                    }
                    one @ Work::One { .. } => {
                        run_batch(
                            backend,
                            &mut vec![Job { work: one, backend: job.backend, queued_at: job.queued_at }],
                        );
                    }
                }
            }
        }
        Ok(Ok(predictions)) => {
            let wrong = BackendError::Failed(format!("{} predictions for 1 text", predictions.len()));
            batch.drain(..).for_each(|job| reply_all(job, &Err(wrong.clone())));
        }
        Ok(Err(error)) => batch.drain(..).for_each(|job| reply_all(job, &Err(error.clone()))),
        Err(_) => {
            // Dropping the reply tells a single request the model panicked on its input.
            for job in batch.drain(..) {
                let chars: usize = job.texts().map(|t| t.chars().count()).sum();
                tracing::error!(text_chars = chars, "Model panicked during inference");
                if let Work::Many { texts, reply } = job.work {
                    let failed = BackendError::Failed("the model panicked on this text".into());
                    let _ = reply.send(texts.iter().map(|_| Err(failed.clone())).collect());
                }
            }
        }
    }
}

/// A cheap text on the caller's thread, as an inference thread would answer it alone: a
/// panic is `Panicked`, as when a thread drops the reply.
fn run_in_place(backend: &dyn Backend, text: &str) -> Result<Prediction, QueueError> {
    Ok(predict_one(backend, text).ok_or(QueueError::Panicked)??)
}

/// One text through the model, a panic turned into an error.
fn run_alone(backend: &dyn Backend, text: &str) -> Result<Prediction, BackendError> {
    predict_one(backend, text).unwrap_or_else(|| Err(BackendError::Failed("the model panicked on this text".into())))
}

/// One text through the model: its answer, or `None` when the model panicked (logged).
fn predict_one(backend: &dyn Backend, text: &str) -> Option<Result<Prediction, BackendError>> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| backend.predict_batch(&[text]))) {
        Ok(Ok(mut p)) if p.len() == 1 => Some(p.pop().ok_or_else(|| BackendError::Failed("no prediction".into()))),
        Ok(Ok(p)) => Some(Err(BackendError::Failed(format!("{} predictions for 1 text", p.len())))),
        Ok(Err(e)) => Some(Err(e)),
        Err(_) => {
            tracing::error!(text_chars = text.chars().count(), "Model panicked during inference");
            None
        }
    }
}

fn reply_all(job: Job, answer: &Result<Prediction, BackendError>) {
    match job.work {
        Work::One { reply, .. } => {
            let _ = reply.send(answer.clone());
        }
        Work::Many { texts, reply } => {
            let _ = reply.send(texts.iter().map(|_| answer.clone()).collect());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Class = text length mod 2, or always `.1`'s probabilities when given.
    /// Also records the size of every call (`.2`).
    struct Echo(Vec<String>, Option<Vec<f64>>, Mutex<Vec<usize>>);

    impl Backend for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn predict_batch(&self, texts: &[&str]) -> Result<Vec<Prediction>, BackendError> {
            self.2.lock().unwrap().push(texts.len());
            if let Some(p) = &self.1 {
                return Ok(texts.iter().map(|_| Prediction::from_probabilities(p.clone())).collect());
            }
            texts
                .iter()
                .map(|text| {
                    assert!(*text != "boom", "bad input");
                    if *text == "refused" {
                        return Err(BackendError::InvalidInput("refused".into()));
                    }
                    if *text == "slow" {
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    Ok(Prediction { class: text.len() % 2, confidence: 1.0, probabilities: vec![0.0, 1.0] })
                })
                .collect()
        }
        fn model_version(&self) -> &str {
            "echo"
        }
        fn labels(&self) -> &[String] {
            &self.0
        }
        fn normalize(&self, text: &str) -> String {
            text.to_owned()
        }
        fn max_input_chars(&self) -> usize {
            100
        }
    }

    fn batching(max_batch: usize) -> Batching {
        Batching { max_batch, max_wait: Duration::ZERO }
    }

    fn queue(capacity: usize) -> InferenceQueue {
        InferenceQueue::start("sentiment", 2, capacity, batching(8)).unwrap()
    }

    /// Answers with the class 1 when it ran on an inference thread, 0 elsewhere; a text of
    /// up to 4 bytes is cheap; "boom" panics.
    struct Where(Vec<String>);

    impl Backend for Where {
        fn name(&self) -> &'static str {
            "where"
        }
        fn predict_batch(&self, texts: &[&str]) -> Result<Vec<Prediction>, BackendError> {
            assert!(!texts.contains(&"boom"), "bad input");
            let on_thread = std::thread::current().name().is_some_and(|n| n.starts_with("inference-"));
            let class = usize::from(on_thread);
            Ok(texts.iter().map(|_| Prediction { class, confidence: 1.0, probabilities: vec![0.0, 1.0] }).collect())
        }
        fn model_version(&self) -> &str {
            "where"
        }
        fn labels(&self) -> &[String] {
            &self.0
        }
        fn normalize(&self, text: &str) -> String {
            text.to_owned()
        }
        fn max_input_chars(&self) -> usize {
            100
        }
        fn runs_in_place(&self, text: &str) -> bool {
            text.len() <= 4
        }
    }

    /// Issue 34: a cheap text runs on the caller's thread when nothing is queued; a costly
    /// one, or any text while requests are queued, goes to the inference threads. A panic in
    /// place is the same `Panicked` as on a thread, and the caller lives on.
    #[tokio::test]
    async fn a_cheap_text_runs_in_place_when_nothing_is_queued() {
        let q = queue(16);
        let backend: Arc<dyn Backend> = Arc::new(Where(vec!["a".into(), "b".into()]));
        let t = Duration::from_secs(5);
        assert_eq!(q.predict(&backend, "abc".into(), t).await.unwrap().class, 0, "in place");
        assert_eq!(q.predict(&backend, "a longer text".into(), t).await.unwrap().class, 1, "on a thread");
        assert_eq!(q.predict(&backend, "boom".into(), t).await, Err(QueueError::Panicked));
        // A deadline under a millisecond is the threads' to keep (answered there, or timed
        // out waiting for them on a busy machine, but never in place).
        let short = q.predict(&backend, "abc".into(), Duration::from_micros(500)).await;
        assert!(matches!(short, Ok(Prediction { class: 1, .. }) | Err(QueueError::Timeout(_))), "{short:?}");
        // A request waiting in the queue: the next cheap text queues behind it.
        q.queued.fetch_add(1, Ordering::Relaxed);
        assert_eq!(q.predict(&backend, "abc".into(), t).await.unwrap().class, 1, "queued");
        q.queued.fetch_sub(1, Ordering::Relaxed);
        // Every job taken was uncounted: the count is back to none.
        assert_eq!(q.queued.load(Ordering::Relaxed), 0);
        assert_eq!(q.predict(&backend, "abc".into(), t).await.unwrap().class, 0);
    }

    fn echo() -> Arc<dyn Backend> {
        Arc::new(Echo(vec!["a".into(), "b".into()], None, Mutex::default()))
    }

    #[tokio::test]
    async fn answers_many_concurrent_requests() {
        let q = Arc::new(queue(1024));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let q = Arc::clone(&q);
                tokio::spawn(async move { q.predict(&echo(), "x".repeat(i), Duration::from_secs(5)).await })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap().class, i % 2);
        }
    }

    #[tokio::test]
    async fn a_panicking_or_refused_input_fails_alone_and_the_threads_survive() {
        let q = Arc::new(queue(64));
        let mut tasks = Vec::new();
        for text in ["boom", "ok", "refused", "fine", "boom", "good"] {
            let q = Arc::clone(&q);
            tasks.push(tokio::spawn(async move { q.predict(&echo(), text.into(), Duration::from_secs(5)).await }));
        }
        let results: Vec<_> = futures_join(tasks).await;
        assert_eq!(results[0], Err(QueueError::Panicked));
        assert_eq!(results[2], Err(QueueError::Backend(BackendError::InvalidInput("refused".into()))));
        for i in [1, 3, 5] {
            assert!(results[i].is_ok(), "{i}: {:?}", results[i]);
        }
        for _ in 0..4 {
            assert!(q.predict(&echo(), "ok".into(), Duration::from_secs(5)).await.is_ok());
        }
    }

    async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_for_two_models_in_one_batch_each_get_their_own_model() {
        let q = Arc::new(InferenceQueue::start("sentiment", 1, 1024, batching(256)).unwrap());
        let labels = vec!["a".to_owned(), "b".to_owned()];
        let left: Arc<dyn Backend> = Arc::new(Echo(labels.clone(), Some(vec![0.9, 0.1]), Mutex::default()));
        let right: Arc<dyn Backend> = Arc::new(Echo(labels, Some(vec![0.2, 0.8]), Mutex::default()));
        let tasks: Vec<_> = (0..400)
            .map(|i| {
                let (q, model) = (Arc::clone(&q), if i % 3 == 0 { Arc::clone(&left) } else { Arc::clone(&right) });
                tokio::spawn(async move { q.predict(&model, "x".into(), Duration::from_secs(5)).await })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let p = t.await.unwrap().unwrap();
            assert_eq!(p.class, usize::from(i % 3 != 0), "job {i} was answered by the other model");
        }
    }

    /// Issue 31: with a wait, a thread gathers requests that arrive one by one into one call,
    /// up to MAX_BATCH_SIZE texts, and a full batch does not wait out the window.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thread_waits_to_gather_a_batch_up_to_its_size() {
        let sizes = Arc::new(Echo(vec!["a".into(), "b".into()], None, Mutex::default()));
        let model: Arc<dyn Backend> = sizes.clone();
        let q = Arc::new(
            InferenceQueue::start("sentiment", 1, 64, Batching { max_batch: 4, max_wait: Duration::from_secs(2) })
                .unwrap(),
        );
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (q, model) = (Arc::clone(&q), Arc::clone(&model));
            tasks.push(tokio::spawn(async move { q.predict(&model, format!("t{i}"), Duration::from_secs(10)).await }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The first four arrive 20 ms apart and fill a batch; the last two wait out the window.
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(*sizes.2.lock().unwrap(), [4, 2]);
        assert!(started.elapsed() >= Duration::from_secs(2), "the second batch waited for more");
        // Without a wait, a lone request runs at once, alone.
        let q = InferenceQueue::start("sentiment", 1, 64, batching(4)).unwrap();
        let started = Instant::now();
        assert!(q.predict(&model, "alone".into(), Duration::from_secs(10)).await.is_ok());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(sizes.2.lock().unwrap().last(), Some(&1));
    }

    #[tokio::test]
    async fn slow_inference_times_out() {
        let q = queue(16);
        let r = q.predict(&echo(), "slow".into(), Duration::from_millis(50)).await;
        assert!(matches!(r, Err(QueueError::Timeout(_))));
    }

    /// Blocks every call until opened; counts the calls that have started.
    struct Gate {
        labels: Vec<String>,
        open: Mutex<bool>,
        opened: std::sync::Condvar,
        entered: std::sync::atomic::AtomicUsize,
    }

    impl Backend for Gate {
        fn name(&self) -> &'static str {
            "gate"
        }
        fn predict_batch(&self, texts: &[&str]) -> Result<Vec<Prediction>, BackendError> {
            self.entered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
            Ok(texts.iter().map(|_| Prediction { class: 0, confidence: 1.0, probabilities: vec![1.0, 0.0] }).collect())
        }
        fn model_version(&self) -> &str {
            "gate"
        }
        fn labels(&self) -> &[String] {
            &self.labels
        }
        fn normalize(&self, text: &str) -> String {
            text.to_owned()
        }
        fn max_input_chars(&self) -> usize {
            100
        }
    }

    impl Gate {
        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    /// Opens the gate when dropped, so a failing test unwinds (the queue joins its threads).
    struct OpenOnDrop(Arc<Gate>);

    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            self.0.open();
        }
    }

    /// Polls `f` once (a queue submission happens at the first poll): `Some` of its output
    /// if that finished it.
    async fn start<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        tokio::select! {
            biased;
            done = f => Some(done),
            () = std::future::ready(()) => None,
        }
    }

    #[tokio::test]
    async fn full_queue_is_refused_not_buffered() {
        // Two threads held inside the model, a queue of one: the fourth job cannot wait.
        let gate = Arc::new(Gate {
            labels: vec!["a".into(), "b".into()],
            open: Mutex::new(false),
            opened: std::sync::Condvar::new(),
            entered: std::sync::atomic::AtomicUsize::new(0),
        });
        let model: Arc<dyn Backend> = gate.clone();
        let q = InferenceQueue::start("sentiment", 2, 1, batching(1)).unwrap();
        let _unblock = OpenOnDrop(Arc::clone(&gate));
        let wait = Duration::from_secs(30);
        // One job at a time into the queue's one place, each taken by a thread before the
        // next; then one more fills the place, and the fourth must be refused. (A job sent
        // while the place is still taken is refused as Full: it is sent again.)
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut jobs = Vec::new();
        for (i, text) in ["a", "b", "c"].into_iter().enumerate() {
            let job = loop {
                let mut job = Box::pin(q.predict(&model, text.into(), wait));
                match start(&mut job).await {
                    None => break job,
                    Some(answer) => assert_eq!(answer, Err(QueueError::Full)),
                }
                assert!(std::time::Instant::now() < deadline, "the queue never took job {text}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            jobs.push(job);
            // The first two are taken by the two threads, which the gate then holds.
            while i < 2 && gate.entered.load(std::sync::atomic::Ordering::SeqCst) < i + 1 {
                assert!(std::time::Instant::now() < deadline, "no thread took job {text}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert_eq!(q.predict(&model, "d".into(), wait).await, Err(QueueError::Full));
        gate.open();
        for job in jobs {
            assert!(job.await.is_ok());
        }
    }
}
