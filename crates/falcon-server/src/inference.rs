//! Model inference off the async reactor: a bounded queue drained by dedicated threads.
//!
//! Each thread takes one job, then whatever else is already waiting (up to `max_batch`),
//! and answers them all before it sleeps again. Under load one wake-up serves many
//! requests; with `spawn_blocking` every request paid a thread hand-off, which cost more
//! CPU than the model itself (see docs/benchmarks.md). A full queue is refused at once
//! (503 `overloaded`), never buffered without bound.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use falcon_model::Prediction;
use tokio::sync::oneshot;

use crate::classifier::Classifier;
use crate::http::error::ApiError;
use crate::telemetry::metrics;

struct Job {
    text: String,
    reply: oneshot::Sender<Prediction>,
}

/// Handle to the inference threads. Dropping the last handle stops and joins them.
pub struct InferenceQueue {
    tx: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl InferenceQueue {
    /// Starts `threads` inference threads sharing a queue of `capacity` jobs.
    pub fn start(
        classifier: Arc<dyn Classifier>,
        threads: usize,
        capacity: usize,
        max_batch: usize,
    ) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Job>(capacity.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..threads.max(1))
            .map(|i| {
                let rx = Arc::clone(&rx);
                let classifier = Arc::clone(&classifier);
                std::thread::Builder::new()
                    .name(format!("inference-{i}"))
                    .spawn(move || run_thread(&rx, classifier.as_ref(), max_batch.max(1)))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self { tx: Some(tx), threads })
    }

    /// Classifies `text`, waiting at most `timeout` for the answer.
    pub async fn predict(&self, text: String, timeout: Duration) -> Result<Prediction, ApiError> {
        let (reply, answer) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or(ApiError::NotReady("inference threads stopped"))?;
        match tx.try_send(Job { text, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ApiError::Overloaded("inference queue is full")),
            Err(TrySendError::Disconnected(_)) => return Err(ApiError::NotReady("inference threads stopped")),
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(p)) => Ok(p),
            // The thread dropped the reply: the model panicked on this input.
            Ok(Err(_)) => Err(ApiError::Internal("inference failed (model panicked)".into())),
            Err(_) => Err(ApiError::InferenceTimeout(timeout.as_secs_f64())),
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

fn run_thread(rx: &Mutex<Receiver<Job>>, classifier: &dyn Classifier, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        {
            // One thread waits in recv while the others wait for the lock: same effect
            // as a multi-consumer channel, with only std.
            let Ok(rx) = rx.lock() else { return };
            match next_job(&rx) {
                Some(job) => batch.push(job),
                None => return,
            }
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        metrics::record_batch(batch.len());
        for job in batch.drain(..) {
            if job.reply.is_closed() {
                continue; // The request already timed out or went away.
            }
            match std::panic::catch_unwind(AssertUnwindSafe(|| classifier.predict(&job.text))) {
                Ok(p) => {
                    let _ = job.reply.send(p);
                }
                Err(_) => tracing::error!(text_chars = job.text.chars().count(), "Model panicked during inference"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<String>);

    impl Classifier for Echo {
        fn predict(&self, text: &str) -> Prediction {
            assert!(text != "boom", "bad input");
            if text == "slow" {
                std::thread::sleep(Duration::from_millis(300));
            }
            Prediction { class: text.len() % 2, confidence: 1.0, probabilities: vec![0.0, 1.0] }
        }
        fn model_version(&self) -> &str {
            "echo"
        }
        fn labels(&self) -> &[String] {
            &self.0
        }
    }

    fn queue(capacity: usize) -> InferenceQueue {
        InferenceQueue::start(Arc::new(Echo(vec!["a".into(), "b".into()])), 2, capacity, 8).unwrap()
    }

    #[tokio::test]
    async fn answers_many_concurrent_requests() {
        let q = Arc::new(queue(1024));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let q = Arc::clone(&q);
                tokio::spawn(async move { q.predict("x".repeat(i), Duration::from_secs(5)).await })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap().class, i % 2);
        }
    }

    #[tokio::test]
    async fn a_panicking_input_fails_alone_and_the_threads_survive() {
        let q = queue(16);
        assert!(matches!(q.predict("boom".into(), Duration::from_secs(5)).await, Err(ApiError::Internal(_))));
        for _ in 0..4 {
            assert!(q.predict("ok".into(), Duration::from_secs(5)).await.is_ok());
        }
    }

    #[tokio::test]
    async fn slow_inference_times_out() {
        let q = queue(16);
        let r = q.predict("slow".into(), Duration::from_millis(50)).await;
        assert!(matches!(r, Err(ApiError::InferenceTimeout(_))));
    }

    #[tokio::test]
    async fn full_queue_is_refused_not_buffered() {
        // Two threads busy with slow jobs, a queue of one: the fourth job cannot wait.
        let q = Arc::new(InferenceQueue::start(Arc::new(Echo(vec!["a".into(), "b".into()])), 2, 1, 1).unwrap());
        let mut pending = Vec::new();
        for _ in 0..3 {
            let q = Arc::clone(&q);
            pending.push(tokio::spawn(async move { q.predict("slow".into(), Duration::from_secs(5)).await }));
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let r = q.predict("x".into(), Duration::from_secs(5)).await;
        assert!(matches!(r, Err(ApiError::Overloaded(_))), "{r:?}");
        for p in pending {
            assert!(p.await.unwrap().is_ok());
        }
    }
}
