//! The request log: one row per POST /infer in `inference_logs`, written by a background
//! actor so the request path never waits for the database.
//!
//! Requests put records in one bounded queue (`RequestLog::record`, never blocks). The
//! writer takes batches from its front (up to `batch_size` rows, waiting up to
//! `batch_window` for a burst to fill one) and writes each with one INSERT. While the
//! database is unreachable the queue is the outage buffer: at most `LOG_BUFFER_SIZE`
//! records, the oldest dropped and counted in `dropped_logs_total` when full. It flushes by
//! itself once writes succeed again ("Flushed N logs"); a health probe notices recovery
//! within a second. On shutdown the writer writes what it holds before the process exits.

mod record;
pub mod sink;
pub mod spool;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use tokio::sync::Notify;

pub use record::{COLUMNS, LogRecord, Value};
pub use sink::Sink;
pub use spool::Spool;

use crate::resilience::CircuitBreaker;
use crate::telemetry::metrics::{
    DB_DURATION, DB_OPERATIONS, DB_POOL_AVAILABLE, DB_POOL_SIZE, DROPPED_LOGS, LOG_BUFFER_SIZE, LOG_SPOOL_BYTES,
};
use crate::telemetry::throttle::Throttle;

/// The one bounded queue between requests and the writer. While the database is down it
/// is the outage buffer: at most `LOG_BUFFER_SIZE` records, oldest dropped (and counted)
/// first, whatever the writer is doing.
///
/// The writer only *peeks* at a batch; the records stay queued (and count against the
/// bound) until the write succeeds. A record trimmed while its write is in flight counts
/// as dropped only if that write then fails, so rows + `dropped_logs_total` always equals
/// the requests made.
struct Queue {
    inner: Mutex<QueueInner>,
    /// With `LOG_SPOOL_DIR`: what overflows memory goes here instead of being dropped.
    spool: Option<Arc<Mutex<Spool>>>,
    capacity: usize,
    wake: Notify,
    closed: AtomicBool,
    /// Fired once by `finish`: cuts short a batch window so shutdown never waits it out.
    closing: Notify,
    full_warning: Throttle,
}

#[derive(Default)]
struct QueueInner {
    items: VecDeque<(u64, Arc<LogRecord>)>,
    next_seq: u64,
    /// Sequence number of the last record of the batch being written.
    in_flight_upto: Option<u64>,
    /// Records trimmed while their write was in flight: dropped only if it fails.
    trimmed_in_flight: u64,
}

impl Queue {
    fn lock(&self) -> Option<std::sync::MutexGuard<'_, QueueInner>> {
        self.inner.lock().ok()
    }

    fn push(&self, record: LogRecord) {
        let Some(mut q) = self.lock() else { return };
        let seq = q.next_seq;
        q.next_seq += 1;
        q.items.push_back((seq, Arc::new(record)));
        let mut evicted = Vec::new();
        let mut dropped = 0u64;
        while q.items.len() > self.capacity {
            let Some((oldest, r)) = q.items.pop_front() else { break };
            if self.spool.is_some() {
                // Spilled to disk (even if its write is in flight: a replay never duplicates).
                evicted.push(r);
            } else if q.in_flight_upto.is_some_and(|upto| oldest <= upto) {
                q.trimmed_in_flight += 1;
            } else {
                dropped += 1;
            }
        }
        gauge!(LOG_BUFFER_SIZE).set(q.items.len() as f64);
        drop(q);
        if !evicted.is_empty() {
            dropped += self.spill(&evicted);
        }
        if dropped > 0 {
            self.count_dropped(dropped);
        }
    }

    /// Appends overflow to the spool (no fsync: this is the request path). Returns the
    /// records that did not fit or could not be written.
    fn spill(&self, records: &[Arc<LogRecord>]) -> u64 {
        let Some(spool) = &self.spool else { return records.len() as u64 };
        let Ok(mut spool) = spool.lock() else { return records.len() as u64 };
        match spool.append(records, false) {
            Ok(rejected) => {
                gauge!(LOG_SPOOL_BYTES).set(spool.bytes() as f64);
                rejected as u64
            }
            Err(error) => {
                tracing::error!(path = %spool.path().display(), error = %error, "Cannot write the log spool");
                records.len() as u64
            }
        }
    }

    fn count_dropped(&self, n: u64) {
        counter!(DROPPED_LOGS).increment(n);
        if self.full_warning.ready() {
            tracing::warn!(buffer_size = self.capacity, "Log buffer full, dropping oldest entry");
        }
    }

    /// Shares up to `max` records from the front and marks them in flight.
    fn peek(&self, max: usize) -> Vec<Arc<LogRecord>> {
        let Some(mut q) = self.lock() else { return Vec::new() };
        let batch: Vec<(u64, Arc<LogRecord>)> = q.items.iter().take(max).cloned().collect();
        q.in_flight_upto = batch.last().map(|(seq, _)| *seq);
        q.trimmed_in_flight = 0;
        batch.into_iter().map(|(_, r)| r).collect()
    }

    /// The batch is in the database: remove what is left of it.
    fn written(&self) {
        let Some(mut q) = self.lock() else { return };
        if let Some(upto) = q.in_flight_upto.take() {
            while q.items.front().is_some_and(|(seq, _)| *seq <= upto) {
                q.items.pop_front();
            }
        }
        q.trimmed_in_flight = 0;
        gauge!(LOG_BUFFER_SIZE).set(q.items.len() as f64);
    }

    /// The batch was not written: it stays queued; records trimmed meanwhile are lost.
    fn failed(&self) {
        let Some(mut q) = self.lock() else { return };
        q.in_flight_upto = None;
        let lost = std::mem::take(&mut q.trimmed_in_flight);
        drop(q);
        if lost > 0 {
            self.count_dropped(lost);
        }
    }

    fn len(&self) -> usize {
        self.lock().map_or(0, |q| q.items.len())
    }
}

/// The request path's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct RequestLog {
    queue: Arc<Queue>,
}

impl RequestLog {
    /// Queues a record for the writer.
    pub fn record(&self, record: LogRecord) {
        self.queue.push(record);
        self.queue.wake.notify_one();
    }
}

/// How the writer behaves.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Records held while the database is unreachable (`LOG_BUFFER_SIZE`).
    pub buffer_size: usize,
    pub batch_size: usize,
    pub batch_window: Duration,
    /// Deadline for one database operation.
    pub op_timeout: Duration,
}

/// Starts the writer; returns the request path's handle, the writer, and the database
/// health probe for the caller to run until `stopping` fires.
pub fn start(
    sink: Sink,
    breaker: Arc<CircuitBreaker>,
    config: WriterConfig,
    spool: Option<Spool>,
    stopping: crate::tasks::Stopping,
) -> (RequestLog, Writer, impl std::future::Future<Output = ()> + Send + 'static) {
    let spool = spool.map(|s| Arc::new(Mutex::new(s)));
    let queue = Arc::new(Queue {
        inner: Mutex::new(QueueInner::default()),
        spool: spool.clone(),
        capacity: config.buffer_size.max(1),
        wake: Notify::new(),
        closed: AtomicBool::new(false),
        closing: Notify::new(),
        full_warning: Throttle::new(Duration::from_secs(10)),
    });
    let available = Arc::new(AtomicBool::new(false));
    let state = WriterState {
        sink: sink.clone(),
        breaker: Arc::clone(&breaker),
        config,
        queue: Arc::clone(&queue),
        migrated: false,
        outage: false,
        flushed_since_outage: 0,
        available: Arc::clone(&available),
        down_warning: Throttle::new(Duration::from_secs(10)),
        spool_full_warning: Throttle::new(Duration::from_secs(10)),
        spool,
    };
    let task = tokio::spawn(state.run());
    let probe = probe(sink, breaker, Arc::clone(&available), config.op_timeout, stopping);
    (RequestLog { queue: Arc::clone(&queue) }, Writer { task, available, queue }, probe)
}

/// The running writer.
pub struct Writer {
    task: tokio::task::JoinHandle<()>,
    available: Arc<AtomicBool>,
    queue: Arc<Queue>,
}

impl Writer {
    /// Whether the last database round trip worked (`/readyz` `checks.database_available`).
    pub fn availability(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.available)
    }

    /// Stops the writer after it has written what it holds, waiting at most `within`.
    /// Records still unwritten then are counted in `dropped_logs_total` and logged.
    pub async fn finish(self, within: Duration) {
        self.queue.closed.store(true, Ordering::SeqCst);
        self.queue.wake.notify_one();
        self.queue.closing.notify_one();
        let abort = self.task.abort_handle();
        let finished = tokio::time::timeout(within, self.task).await.is_ok();
        if !finished {
            abort.abort();
        }
        let lost = self.queue.len();
        let outcome = if finished { "finished" } else { "aborted" };
        tracing::info!(task = "request_log_writer", outcome, unwritten = lost, "Background task stopped");
        if !finished || lost > 0 {
            counter!(DROPPED_LOGS).increment(lost as u64);
            tracing::error!(lost, "Database unavailable at shutdown; request-log records not written");
        }
    }
}

/// Checks the database every second; success closes the breaker at once so the buffer
/// flushes without waiting out the breaker's open period.
async fn probe(
    sink: Sink,
    breaker: Arc<CircuitBreaker>,
    available: Arc<AtomicBool>,
    timeout: Duration,
    mut stopping: crate::tasks::Stopping,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stopping.wait() => return,
        }
        let ok = matches!(tokio::time::timeout(timeout, sink.ping()).await, Ok(Ok(())));
        available.store(ok, Ordering::Relaxed);
        if ok {
            breaker.probe_succeeded();
        }
        let (size, idle) = sink.pool_stats();
        gauge!(DB_POOL_SIZE).set(f64::from(size));
        gauge!(DB_POOL_AVAILABLE).set(idle as f64);
    }
}

struct WriterState {
    sink: Sink,
    breaker: Arc<CircuitBreaker>,
    config: WriterConfig,
    queue: Arc<Queue>,
    migrated: bool,
    outage: bool,
    flushed_since_outage: usize,
    available: Arc<AtomicBool>,
    down_warning: Throttle,
    spool: Option<Arc<Mutex<Spool>>>,
    spool_full_warning: Throttle,
}

/// Pause between attempts while the database is failing.
const RETRY_EVERY: Duration = Duration::from_millis(500);

impl WriterState {
    async fn run(mut self) {
        let mut next_replay = tokio::time::Instant::now();
        loop {
            let closing = self.queue.closed.load(Ordering::SeqCst);
            // Older records first: replay the spool whenever the database may be back.
            if self.spooled() && tokio::time::Instant::now() >= next_replay && !self.replay_spool().await {
                next_replay = tokio::time::Instant::now() + RETRY_EVERY;
            }
            let waiting = self.queue.len();
            if waiting == 0 {
                if closing {
                    return;
                }
                if self.spooled() {
                    let _ = tokio::time::timeout(RETRY_EVERY, self.queue.wake.notified()).await;
                } else {
                    self.queue.wake.notified().await;
                }
                continue;
            }
            // Give a burst the batch window to fill the batch (not while shutting down).
            if waiting < self.config.batch_size && !closing {
                tokio::select! {
                    () = tokio::time::sleep(self.config.batch_window) => {}
                    () = self.queue.closing.notified() => {}
                }
            }
            let batch = self.queue.peek(self.config.batch_size);
            let n = batch.len();
            if !self.spooled() && self.write(&batch).await {
                self.queue.written();
                if self.outage {
                    self.flushed_since_outage += n;
                    if self.queue.len() == 0 {
                        let flushed = std::mem::take(&mut self.flushed_since_outage);
                        self.outage = false;
                        tracing::info!(flushed, backend = self.sink.backend(), "Flushed {flushed} logs");
                    }
                }
            } else if self.spool.is_some() {
                // Unwritable now (or older records are still spooled): to disk, out of memory.
                self.outage = true;
                if self.spool_batch(&batch) {
                    self.queue.written();
                } else {
                    self.queue.failed();
                    tokio::time::sleep(RETRY_EVERY).await;
                }
            } else {
                self.queue.failed();
                if closing {
                    // One last attempt per batch at shutdown; `finish` counts what is left.
                    return;
                }
                tokio::time::sleep(RETRY_EVERY).await;
            }
        }
    }

    fn spooled(&self) -> bool {
        self.spool.as_ref().is_some_and(|s| s.lock().is_ok_and(|s| !s.is_empty()))
    }

    /// Appends a batch to the spool (synced); false if the disk refused it (it stays in memory).
    fn spool_batch(&self, batch: &[Arc<LogRecord>]) -> bool {
        let Some(spool) = &self.spool else { return false };
        let Ok(mut spool) = spool.lock() else { return false };
        match spool.append(batch, true) {
            Ok(rejected) => {
                gauge!(LOG_SPOOL_BYTES).set(spool.bytes() as f64);
                if rejected > 0 {
                    counter!(DROPPED_LOGS).increment(rejected as u64);
                    if self.spool_full_warning.ready() {
                        tracing::warn!(path = %spool.path().display(), "Log spool full (LOG_SPOOL_MAX_BYTES), dropping entries");
                    }
                }
                true
            }
            Err(error) => {
                tracing::error!(path = %spool.path().display(), error = %error, "Cannot write the log spool");
                false
            }
        }
    }

    /// Writes everything spooled, oldest first, then empties the spool. False if the
    /// database is still unreachable (the spool is kept; rows already written are not
    /// duplicated on the next try, thanks to ON CONFLICT).
    async fn replay_spool(&mut self) -> bool {
        let Some(shared) = self.spool.clone() else { return true };
        let read = match shared.lock() {
            Ok(spool) => spool.read_all().map_err(|e| (spool.path().display().to_string(), e)),
            Err(_) => return false,
        };
        let (records, corrupt) = match read {
            Ok(r) => r,
            Err((path, error)) => {
                tracing::error!(path, error = %error, "Cannot read the log spool");
                return false;
            }
        };
        let records: Vec<Arc<LogRecord>> = records.into_iter().map(Arc::new).collect();
        for chunk in records.chunks(self.config.batch_size.max(1)) {
            if !self.write(chunk).await {
                return false;
            }
        }
        let Ok(mut spool) = shared.lock() else { return false };
        // Overflow spilled by requests while we replayed is in the file too: keep going
        // next time rather than clear records we have not written.
        let (now_in_file, _) = spool.read_all().unwrap_or_default();
        if now_in_file.len() > records.len() + corrupt {
            return false;
        }
        if let Err(error) = spool.clear() {
            tracing::error!(path = %spool.path().display(), error = %error, "Cannot empty the log spool");
            return false;
        }
        drop(spool);
        gauge!(LOG_SPOOL_BYTES).set(0.0);
        if corrupt > 0 {
            counter!(DROPPED_LOGS).increment(corrupt as u64);
            tracing::warn!(corrupt, "Skipped unreadable log spool records (torn or corrupt lines)");
        }
        let flushed = records.len();
        tracing::info!(flushed, source = "spool", backend = self.sink.backend(), "Flushed {flushed} logs");
        true
    }

    /// One INSERT through the breaker. True when the rows are in the database.
    async fn write(&mut self, batch: &[Arc<LogRecord>]) -> bool {
        if !self.breaker.try_acquire() {
            return false;
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.config.op_timeout, async {
            if !self.migrated {
                self.sink.migrate().await.map_err(|e| e.to_string())?;
                self.migrated = true;
            }
            self.sink.write(batch).await.map_err(|e| {
                // The table is gone (database recreated or restored): migrate again next time.
                if let sqlx::Error::Database(db) = &e
                    && db.code().as_deref() == Some("42P01")
                {
                    self.migrated = false;
                }
                e.to_string()
            })
        })
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {:?}", self.config.op_timeout)));
        histogram!(DB_DURATION, "operation" => "insert").record(started.elapsed().as_secs_f64());
        match result {
            Ok(_) => {
                counter!(DB_OPERATIONS, "operation" => "insert", "status" => "success").increment(1);
                self.breaker.record_success();
                self.available.store(true, Ordering::Relaxed);
                true
            }
            Err(error) => {
                counter!(DB_OPERATIONS, "operation" => "insert", "status" => "error").increment(1);
                self.breaker.record_failure();
                self.available.store(false, Ordering::Relaxed);
                self.outage = true;
                if self.down_warning.ready() {
                    tracing::warn!(error, rows = batch.len(), "Database unavailable; buffering request logs");
                }
                false
            }
        }
    }
}
