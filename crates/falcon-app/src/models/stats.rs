//! A model's statistics, as the Open Inference Protocol's statistics extension reports them
//! (Triton's `ModelStatistics`): counters only, updated with relaxed atomics on the request
//! and inference paths, read whole when asked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and the cumulative time of what it counts.
#[derive(Debug, Default)]
pub struct Timed {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Timed {
    pub fn add(&self, count: u64, took: Duration) {
        self.count.fetch_add(count, Ordering::Relaxed);
        self.ns.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).saturating_mul(count), Ordering::Relaxed);
    }

    pub fn read(&self) -> (u64, u64) {
        (self.count.load(Ordering::Relaxed), self.ns.load(Ordering::Relaxed))
    }
}

/// What one model has done since it was loaded.
#[derive(Debug, Default)]
pub struct ModelStats {
    /// Requests answered (a batch request is one), and their time from arrival to answer.
    pub success: Timed,
    /// Requests that failed after naming this model.
    pub fail: Timed,
    /// Requests the response cache answered whole, and their time.
    pub cache_hit: Timed,
    /// Requests the cache was asked and could not answer, and their time.
    pub cache_miss: Timed,
    /// Requests' time waiting for an inference thread (0 for a text run in place).
    pub queue: Timed,
    /// Requests' time in the model (each request of a batched call counts the whole call).
    pub compute: Timed,
    /// Texts the model classified (Triton's `inference_count`: batch elements).
    inferences: AtomicU64,
    /// Calls into the model (Triton's `execution_count`: one batched call is one).
    executions: AtomicU64,
    /// When the model last answered, in milliseconds since the epoch (0: never).
    last_inference_ms: AtomicU64,
}

/// A snapshot of `ModelStats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    pub last_inference_ms: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub success: (u64, u64),
    pub fail: (u64, u64),
    pub queue: (u64, u64),
    pub compute: (u64, u64),
    pub cache_hit: (u64, u64),
    pub cache_miss: (u64, u64),
}

impl ModelStats {
    /// One call into the model for `texts` texts, taking `took`, for `requests` requests.
    pub fn record_execution(&self, texts: usize, requests: usize, took: Duration) {
        self.executions.fetch_add(1, Ordering::Relaxed);
        self.inferences.fetch_add(texts as u64, Ordering::Relaxed);
        self.compute.add(requests as u64, took);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_inference_ms.store(now, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inferences.load(Ordering::Relaxed),
            execution_count: self.executions.load(Ordering::Relaxed),
            success: self.success.read(),
            fail: self.fail.read(),
            queue: self.queue.read(),
            compute: self.compute.read(),
            cache_hit: self.cache_hit.read(),
            cache_miss: self.cache_miss.read(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batched_call_counts_its_texts_once_and_its_time_for_each_request() {
        let stats = ModelStats::default();
        stats.record_execution(5, 2, Duration::from_micros(30));
        stats.record_execution(1, 1, Duration::from_micros(10));
        let s = stats.snapshot();
        assert_eq!((s.inference_count, s.execution_count), (6, 2));
        assert_eq!(s.compute, (3, 70_000));
        assert!(s.last_inference_ms > 0);
        stats.success.add(1, Duration::from_millis(1));
        assert_eq!(stats.snapshot().success, (1, 1_000_000));
        assert_eq!(stats.snapshot().fail, (0, 0));
    }
}
