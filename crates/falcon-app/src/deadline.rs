//! A deadline around a future whose timer is made only when it is needed.
//!
//! `tokio::time::timeout` makes its timer when it is called: it looks up the runtime's
//! handle (a shared reference count, touched by every runtime thread) and builds a timer
//! entry, then drops both, for every request, although most requests finish at their first
//! poll, before any timer could matter. `within` polls the future first and makes the timer
//! only if the future is still pending: a request that completes at once pays nothing for
//! its deadline, and one that waits gets the same timer as before.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use tokio::time::{Instant, Sleep};

/// The deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Runs `fut` until `deadline`: its output, or `Elapsed` (and `fut` dropped) once the
/// deadline has passed. A future that finishes at its first poll never makes a timer.
pub async fn within<F: Future>(deadline: Instant, fut: F) -> Result<F::Output, Elapsed> {
    let mut fut = pin!(fut);
    let mut timer: Option<std::pin::Pin<Box<Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().poll(cx).map(|()| Err(Elapsed))
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_ready_future_is_answered_even_past_its_deadline() {
        let past = Instant::now() - Duration::from_secs(1);
        assert_eq!(within(past, async { 7 }).await, Ok(7), "the future goes first, as with tokio's timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_that_finishes_in_time_is_answered() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let slow = async {
            tokio::time::sleep(Duration::from_secs(4)).await;
            "done"
        };
        assert_eq!(within(deadline, slow).await, Ok("done"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_still_pending_at_the_deadline_is_dropped() {
        struct Dropped<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Dropped<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let dropped = std::sync::atomic::AtomicBool::new(false);
        let start = Instant::now();
        let never = async {
            let _guard = Dropped(&dropped);
            std::future::pending::<()>().await;
        };
        assert_eq!(within(start + Duration::from_secs(3), never).await, Err(Elapsed));
        assert_eq!(start.elapsed(), Duration::from_secs(3), "it waited until the deadline, not longer");
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst), "the future was dropped");
    }
}
