//! The worker's background tasks, owned in one place.
//!
//! Every task is spawned here, stopped by one signal, and awaited in the order it was
//! started, each within the grace period; one log line says how each ended. Nothing is
//! detached, and nothing is aborted without saying so.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::adapters::request_log::Writer;
use crate::shutdown::StopSender;
use crate::shutdown::Stopping;

/// The worker's background tasks and the request-log writer.
pub struct Background {
    stop: StopSender,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    writer: Option<Writer>,
}

impl Default for Background {
    fn default() -> Self {
        Self::new()
    }
}

impl Background {
    pub fn new() -> Self {
        Self { stop: StopSender::new(), tasks: Vec::new(), writer: None }
    }

    /// The signal every looping task watches.
    pub fn stopping(&self) -> Stopping {
        self.stop.stopping()
    }

    /// Runs `task` until it returns; it must return once `stopping()` fires or its input
    /// closes.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push((name, tokio::spawn(task)));
    }

    /// The request-log writer, stopped last so it writes what the others left.
    pub fn set_writer(&mut self, writer: Writer) {
        self.writer = Some(writer);
    }

    /// Names of the tasks, in stop order.
    pub fn names(&self) -> Vec<&'static str> {
        self.tasks.iter().map(|(n, _)| *n).chain(self.writer.as_ref().map(|_| "request_log_writer")).collect()
    }

    /// Signals every task to stop and awaits each, in order, within `grace`; then lets the
    /// request-log writer flush.
    pub async fn shutdown(self, grace: Duration) {
        self.stop.stop();
        for (task, handle) in self.tasks {
            let abort = handle.abort_handle();
            match tokio::time::timeout(grace, handle).await {
                Ok(Ok(())) => tracing::info!(task, outcome = "finished", "Background task stopped"),
                Ok(Err(e)) if e.is_panic() => tracing::error!(task, outcome = "panicked", "Background task stopped"),
                Ok(Err(_)) => tracing::warn!(task, outcome = "cancelled", "Background task stopped"),
                Err(_) => {
                    abort.abort();
                    tracing::warn!(
                        task,
                        outcome = "aborted",
                        grace_seconds = grace.as_secs_f64(),
                        "Background task stopped"
                    );
                }
            }
        }
        if let Some(writer) = self.writer {
            writer.finish(grace).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_task_is_stopped_and_awaited_in_order() {
        let mut bg = Background::new();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        for name in ["first", "second"] {
            let mut stopping = bg.stopping();
            let order = Arc::clone(&order);
            bg.spawn(name, async move {
                stopping.wait().await;
                order.lock().unwrap().push(name);
            });
        }
        assert_eq!(bg.names(), ["first", "second"]);
        bg.shutdown(Duration::from_secs(1)).await;
        assert_eq!(*order.lock().unwrap(), ["first", "second"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_the_signal_is_aborted_after_the_grace_period() {
        let mut bg = Background::new();
        let dropped = Arc::new(AtomicBool::new(false));
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let flag = Flag(Arc::clone(&dropped));
        bg.spawn("stubborn", async move {
            let _flag = flag;
            std::future::pending::<()>().await;
        });
        bg.shutdown(Duration::from_secs(2)).await;
        tokio::task::yield_now().await;
        assert!(dropped.load(Ordering::SeqCst), "the task was aborted, not left running");
    }
}
