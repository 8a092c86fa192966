//! The memory-growth drill of runbook incident #6. With `DEBUG_MEMORY_GROWTH=true`, every
//! POST /infer keeps `DEBUG_MEMORY_GROWTH_MB_PER_REQUEST` MiB of written (resident) memory
//! until the process exits, so `memory_usage_bytes`, the `HighMemoryUsage` alert and the
//! dashboard's "Worker Memory Usage" panel can be rehearsed. Off by default; when on, the
//! worker says so loudly at start-up and in `debug_memory_growth_enabled`.

use std::sync::Mutex;

use crate::telemetry::metrics::{MEMORY_GROWTH_BYTES, MEMORY_GROWTH_ENABLED};
use metrics::gauge;

const MIB: usize = 1024 * 1024;

#[derive(Debug)]
pub struct MemoryBallast {
    bytes_per_request: usize,
    /// One chunk of `bytes_per_request` per request so far.
    held: Mutex<Vec<Box<[u8]>>>,
}

impl MemoryBallast {
    /// Announces the drill (WARN and gauge) and returns the ballast to grow per request.
    pub fn start(mb_per_request: u32) -> Self {
        tracing::warn!(
            mb_per_request,
            "DEBUG_MEMORY_GROWTH is on: every /infer request keeps {mb_per_request} MiB until the worker exits. \
             This is the memory-leak drill of runbook incident #6; never run it in production"
        );
        gauge!(MEMORY_GROWTH_ENABLED).set(1.0);
        Self { bytes_per_request: mb_per_request as usize * MIB, held: Mutex::default() }
    }

    /// Keeps one request's ballast. The bytes are written, not just reserved, so they count
    /// in the resident set.
    pub fn grow(&self) {
        if self.bytes_per_request == 0 {
            return;
        }
        let chunk = vec![0xA5u8; self.bytes_per_request].into_boxed_slice();
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        held.push(chunk);
        gauge!(MEMORY_GROWTH_BYTES).set((held.len() * self.bytes_per_request) as f64);
    }

    pub fn held_bytes(&self) -> usize {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len() * self.bytes_per_request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_keeps_its_share() {
        let b = MemoryBallast::start(2);
        for _ in 0..3 {
            b.grow();
        }
        assert_eq!(b.held_bytes(), 6 * MIB);
        let held = b.held.lock().unwrap();
        assert!(held.iter().all(|c| c.iter().all(|&x| x == 0xA5)));
    }

    #[test]
    fn zero_megabytes_keeps_nothing() {
        let b = MemoryBallast::start(0);
        b.grow();
        assert_eq!(b.held_bytes(), 0);
    }
}
