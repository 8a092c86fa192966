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

/// Rate-limits log lines per kind: at most `per_window` lines of one kind in each window;
/// the rest are counted, and the next line of that kind that is logged carries the count
/// of what was suppressed before it. Metrics keep the full counts; this only spares the log.
#[derive(Debug)]
pub struct LogLimiter {
    per_window: u32,
    window: Duration,
    kinds: std::sync::Mutex<std::collections::HashMap<&'static str, KindWindow>>,
}

#[derive(Debug, Clone, Copy)]
struct KindWindow {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self { per_window, window, kinds: std::sync::Mutex::default() }
    }

    /// `Some(n)`: log this line, noting `n` lines of its kind suppressed before it; `None`:
    /// suppress it.
    pub fn admit(&self, kind: &'static str) -> Option<u64> {
        self.admit_at(kind, Instant::now())
    }

    /// `admit` as of `now` (tests drive the clock).
    pub fn admit_at(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let Ok(mut kinds) = self.kinds.lock() else { return Some(0) };
        let w = kinds.entry(kind).or_insert(KindWindow { started: now, logged: 0, suppressed: 0 });
        if now.saturating_duration_since(w.started) >= self.window {
            w.started = now;
            w.logged = 0;
        }
        if w.logged < self.per_window {
            w.logged += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod limiter_tests {
    use super::*;

    #[test]
    fn logs_the_first_lines_of_a_kind_then_counts_the_rest_into_the_next_window() {
        let l = LogLimiter::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        let admitted: Vec<Option<u64>> = (0..10).map(|_| l.admit_at("overloaded", t0)).collect();
        assert_eq!(admitted[..3], [Some(0), Some(0), Some(0)]);
        assert!(admitted[3..].iter().all(Option::is_none));
        assert_eq!(l.admit_at("not_found", t0), Some(0), "each kind has its own budget");
        assert_eq!(
            l.admit_at("overloaded", t0 + Duration::from_secs(1)),
            Some(7),
            "the next line says 7 were suppressed"
        );
        assert_eq!(l.admit_at("overloaded", t0 + Duration::from_secs(1)), Some(0));
    }
}
