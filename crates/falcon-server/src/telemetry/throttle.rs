//! Log a recurring warning at most once per interval, not once per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Says whether a recurring event should be logged now.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    epoch: Instant,
    /// When it last said yes, in ms since `epoch` plus one (0 = never).
    last: AtomicU64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self { every, epoch: Instant::now(), last: AtomicU64::new(0) }
    }

    /// True at most once per interval (the first call is always true).
    pub fn ready(&self) -> bool {
        self.ready_at(Instant::now())
    }

    /// `ready` as of `now` (tests drive the clock).
    pub fn ready_at(&self, now: Instant) -> bool {
        let now = now.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= self.every.as_millis() as u64)
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_yes_once_per_interval() {
        let t = Throttle::new(Duration::from_secs(10));
        let t0 = t.epoch;
        assert!(t.ready_at(t0));
        assert!(!t.ready_at(t0 + Duration::from_millis(9_999)));
        assert!(t.ready_at(t0 + Duration::from_secs(10)));
        assert!(!t.ready_at(t0 + Duration::from_secs(15)));
        assert!(t.ready_at(t0 + Duration::from_secs(20)));
    }
}
