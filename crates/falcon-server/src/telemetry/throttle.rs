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
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
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
        let t = Throttle::new(Duration::from_millis(50));
        assert!(t.ready());
        assert!(!t.ready());
        std::thread::sleep(Duration::from_millis(60));
        assert!(t.ready());
        assert!(!t.ready());
    }
}
