//! The one stop signal every background task watches. It lives apart from `tasks` (which
//! owns and awaits the tasks) so that the modules whose loops watch it (`request_log`,
//! `telemetry`, `cache`) need not import the module that owns them.

use tokio::sync::watch;

/// The sending half: `Background` holds it and fires it once, at shutdown.
pub struct StopSender(watch::Sender<bool>);

impl StopSender {
    pub fn new() -> Self {
        Self(watch::channel(false).0)
    }

    /// A receiver of this signal.
    pub fn stopping(&self) -> Stopping {
        Stopping(Some(self.0.subscribe()))
    }

    /// Tells every `Stopping` that shutdown has begun.
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Default for StopSender {
    fn default() -> Self {
        Self::new()
    }
}

/// The stop signal, as a task sees it.
#[derive(Clone)]
pub struct Stopping(Option<watch::Receiver<bool>>);

impl Stopping {
    /// Completes once shutdown has begun (at once if it already has, or if the owner is gone).
    pub async fn wait(&mut self) {
        match &mut self.0 {
            Some(rx) => {
                let _ = rx.wait_for(|stop| *stop).await;
            }
            None => std::future::pending().await,
        }
    }

    /// A signal that never fires (tasks run by tests that own no `Background`).
    pub fn never() -> Self {
        Self(None)
    }

    /// Waits for `ticks`' next tick: true then, false once shutdown has begun. A periodic
    /// task is `let mut ticks = every(d); while stopping.tick(&mut ticks).await { … }`.
    pub async fn tick(&mut self, ticks: &mut tokio::time::Interval) -> bool {
        tokio::select! {
            _ = ticks.tick() => true,
            () = self.wait() => false,
        }
    }
}

/// Ticks every `period`, the first at once; a late tick delays the next rather than
/// bunching them.
pub fn every(period: std::time::Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_receiver_sees_the_stop_even_one_made_after_it() {
        let sender = StopSender::new();
        let mut before = sender.stopping();
        sender.stop();
        let mut after = sender.stopping();
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            before.wait().await;
            after.wait().await;
        })
        .await
        .expect("both receivers saw the stop");
    }

    #[tokio::test(start_paused = true)]
    async fn never_does_not_fire() {
        let waited = tokio::time::timeout(std::time::Duration::from_secs(3600), Stopping::never().wait()).await;
        assert!(waited.is_err());
    }
}
