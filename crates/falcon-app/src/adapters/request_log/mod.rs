//! The request log: one row in `inference_logs` per `POST /infer`, per text of a batch
//! (`/infer/batch`, OIP infer), and per batch that failed as a whole; written by a
//! background writer so the request path never waits for the database.
//!
//! With the spool on (the default, `LOG_SPOOL_DIR`), `RequestLog::record` appends each
//! record to a memory-mapped journal on disk before the response goes out: a copy, no
//! system call, and a `kill -9` loses nothing the worker answered for. The writer reads
//! the journal in order, writes batches (up to `LOG_WRITER_CONCURRENCY` at once) and
//! commits the journal once the database has them. Overload and outages only make the
//! journal longer; it is read back as soon as the database keeps up again, and at the next
//! start. Nothing is dropped until the journal reaches `LOG_SPOOL_MAX_BYTES`; then the
//! record falls back to the memory buffer, and what that cannot hold is counted in
//! `dropped_logs_total`. Records beyond `LOG_BUFFER_SIZE` behind the writer count as
//! spooled (`log_spooled_total`) and, once written, as replayed (`log_replayed_total`).
//!
//! With the spool off (`LOG_SPOOL_DIR=`), records wait in a memory buffer of
//! `LOG_BUFFER_SIZE`, oldest dropped and counted when full.
//!
//! A batch the database rejects for a reason other than being away (a constraint, a bad
//! value) is tried three times, then split in halves until the rejected rows are found:
//! they go to the dead-letter file beside the spool (`log_dead_letter_total`), the rest
//! are written. On shutdown the writer writes what it can; what is left stays in the
//! journal for the next start.

mod record;
pub mod retention;
pub mod sink;
pub mod spool;
mod sqlite;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use falcon_journal::{AppendError, Journal, Position, Reader};
use metrics::{counter, gauge, histogram};
use tokio::sync::Notify;
use tokio::task::JoinSet;

pub use record::{AsRow, COLUMNS, DecodeError, Encoded, LogId, LogRecord, LogRow, Value};
pub use retention::Retention;
pub use sink::{Sink, WriteError};
pub use spool::Spool;

use crate::adapters::resilience::CircuitBreaker;
use crate::telemetry::metrics::{
    DB_DURATION, DB_OPERATIONS, DB_POOL_AVAILABLE, DB_POOL_SIZE, DROPPED_LOGS, LOG_BUFFER_SIZE, LOG_DEAD_LETTER,
    LOG_REPLAYED, LOG_SPOOL_BYTES, LOG_SPOOLED,
};
use crate::telemetry::throttle::Throttle;

/// Flag in a journal record: appended while more than `LOG_BUFFER_SIZE` records waited.
const SPOOLED: u8 = 1;
/// Rejections of one batch before it is split to find the bad rows.
const POISON_ATTEMPTS: u32 = 3;
/// Pause between attempts while the database is failing.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Failed attempts on the database once shutdown has begun, before the writer stops.
const SHUTDOWN_TRIES: u32 = 4;

/// When the writer may try the database again, and how often it failed since shutdown began.
#[derive(Default)]
struct Pause {
    until: Option<tokio::time::Instant>,
    failed_while_closing: u32,
}

impl Pause {
    /// An attempt failed: the next waits `RETRY_EVERY`; one made during shutdown counts
    /// toward `SHUTDOWN_TRIES`.
    fn failed(&mut self, closing: bool) {
        self.until = Some(tokio::time::Instant::now() + RETRY_EVERY);
        self.failed_while_closing += u32::from(closing);
    }

    fn active(&self) -> bool {
        self.until.is_some_and(|t| tokio::time::Instant::now() < t)
    }
}

/// The disk side of the request log: the journal, its reader, and the dead-letter file.
pub struct Spooling {
    journal: Journal,
    reader: Reader,
    dead_letter: Spool,
}

/// Encodes `row` into `buf` (cleared first) and appends it to the journal.
fn append_to(journal: &Journal, row: &LogRow<'_>, flags: u8, buf: &mut Vec<u8>) -> Result<(), AppendError> {
    buf.clear();
    row.encode(flags, buf);
    journal.append(buf)
}

/// What `open_spool` found left by an earlier run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Leftover {
    /// Bytes of journal segments to replay.
    pub journal_bytes: u64,
    /// Records moved over from a spool file of an older build.
    pub imported: usize,
}

/// Opens the spool of worker `worker_id` in `dir`, bounded by `max_bytes` on disk.
pub fn open_spool(dir: &Path, worker_id: &str, max_bytes: u64) -> std::io::Result<(Spooling, Leftover)> {
    let options = falcon_journal::Options::for_max_bytes(max_bytes);
    let (journal, reader, recovered) = Journal::open(dir, &format!("request-log-{worker_id}"), options)?;
    let dead_letter = Spool::open_file(dir.join(format!("dead-letter-{worker_id}.jsonl")), max_bytes)?;
    // An older build spooled JSON lines: move them into the journal, then drop the file.
    let mut legacy = Spool::open_file(dir.join(format!("request-log-{worker_id}.jsonl")), u64::MAX)?;
    let mut imported = 0;
    if !legacy.is_empty() {
        let (records, corrupt) = legacy.read_all()?;
        let mut buf = Vec::new();
        for r in &records {
            append_to(&journal, &r.row(), SPOOLED, &mut buf).map_err(std::io::Error::other)?;
        }
        legacy.clear()?;
        imported = records.len();
        if corrupt > 0 {
            counter!(DROPPED_LOGS).increment(corrupt as u64);
        }
    }
    Ok((Spooling { journal, reader, dead_letter }, Leftover { journal_bytes: recovered.bytes, imported }))
}

/// Shared by the request path and the writer.
struct Shared {
    journal: Option<Journal>,
    /// Records waiting in memory: all of them with the spool off, else those the journal
    /// refused (its bound reached, or the disk failing).
    memory: Mutex<VecDeque<Encoded>>,
    capacity: usize,
    /// Records appended to the journal, and those the database has: their difference is
    /// the backlog that marks a record as spooled.
    appended: AtomicU64,
    committed: AtomicU64,
    /// Memory records the writer holds (in flight, or waiting to be retried).
    held: AtomicUsize,
    wake: Notify,
    /// Fired while a whole batch (`memory_batch`) waits in memory: wakes a writer that is
    /// waiting out its batch window, which a record alone does not.
    full: Notify,
    /// `LOG_BATCH_SIZE`: a batch this large goes without waiting for the window.
    batch_size: u64,
    /// A whole batch in memory; see `memory_batch`.
    memory_batch: u64,
    closed: AtomicBool,
    /// Fired once by `finish`: cuts short waits so shutdown never sits them out.
    closing: Notify,
    full_warning: Throttle,
    journal_warning: Throttle,
    /// `log_spooled_total`, resolved once: while the writer is behind, every record counts
    /// (a registry look-up per request at saturation, issue 34).
    spooled: metrics::Counter,
}

impl Shared {
    fn count_dropped(&self, n: u64) {
        counter!(DROPPED_LOGS).increment(n);
        if self.full_warning.ready() {
            tracing::warn!(buffer_size = self.capacity, "Log buffer full, dropping oldest entry");
        }
    }

    fn push_memory(&self, record: Encoded) {
        let Ok(mut q) = self.memory.lock() else { return self.count_dropped(1) };
        q.push_back(record);
        let over = q.len().saturating_sub(self.capacity);
        q.drain(..over);
        let waiting = q.len() as u64;
        drop(q);
        self.one_more_waiting(waiting);
        if over > 0 {
            self.count_dropped(over as u64);
        }
    }

    /// A record was added to memory, and `waiting` now wait there: once a whole batch
    /// waits, wake a writer that waits out its batch window (else a window's records beyond
    /// `LOG_BUFFER_SIZE` were dropped: 36 % of them at 8,000 req/s). Every record past a
    /// whole batch notifies, as every record notifies `wake`: an atomic store when the
    /// writer is busy, and no record can slip past a writer that has just gone to sleep.
    fn one_more_waiting(&self, waiting: u64) {
        if waiting >= self.memory_batch {
            self.full.notify_one();
        }
    }

    fn take_memory(&self, max: usize) -> Vec<Encoded> {
        let Ok(mut q) = self.memory.lock() else { return Vec::new() };
        let n = q.len().min(max);
        let taken: Vec<Encoded> = q.drain(..n).collect();
        self.held.fetch_add(taken.len(), Ordering::Relaxed);
        taken
    }

    fn memory_len(&self) -> usize {
        self.memory.lock().map_or(0, |q| q.len())
    }

    /// Records appended to the journal that the database does not have yet.
    fn journal_backlog(&self) -> u64 {
        self.appended.load(Ordering::Relaxed).saturating_sub(self.committed.load(Ordering::Relaxed))
    }

    /// Records not yet in the database (journal backlog and memory).
    fn waiting(&self) -> u64 {
        self.journal_backlog() + self.memory_len() as u64 + self.held.load(Ordering::Relaxed) as u64
    }
}

thread_local! {
    /// The request path's encoding buffer, reused.
    static ENCODED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The request path's handle: cheap to clone, never blocks on the database.
#[derive(Clone)]
pub struct RequestLog {
    shared: Arc<Shared>,
    backend: &'static str,
}

impl RequestLog {
    /// Where the rows go: `postgres` or `sqlite`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Keeps a record for the writer: in the journal when there is one (durable once this
    /// returns), else in memory.
    pub fn record(&self, record: LogRecord) {
        self.record_row(&record.row());
    }

    /// `record` for a borrowed row: the request path's call, which makes no `LogRecord`.
    pub fn record_row(&self, row: &LogRow<'_>) {
        if !self.journaled(row) {
            self.shared.push_memory(Encoded::of(row));
            self.shared.wake.notify_one();
        }
    }

    /// Appends `row` to the journal, if there is one and it takes the row.
    fn journaled(&self, row: &LogRow<'_>) -> bool {
        let shared = &self.shared;
        let Some(journal) = &shared.journal else { return false };
        let flags = if shared.journal_backlog() >= shared.capacity as u64 { SPOOLED } else { 0 };
        match ENCODED.with_borrow_mut(|buf| append_to(journal, row, flags, buf)) {
            Ok(()) => {
                // No whole-batch wake-up here: the journal holds a window's backlog without
                // loss, and a writer that wakes as each batch fills cost 4-7 % of the
                // requests served at saturation (issue 34); memory, bounded, needs it.
                shared.appended.fetch_add(1, Ordering::Relaxed);
                if flags == SPOOLED {
                    shared.spooled.increment(1);
                }
                shared.wake.notify_one();
                true
            }
            Err(error) => {
                if shared.journal_warning.ready() {
                    tracing::warn!(path = %journal.dir().display(), error = %error, "Log spool refused a record (LOG_SPOOL_MAX_BYTES or disk); keeping it in memory");
                }
                false
            }
        }
    }
}

/// How the writer behaves.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Records held in memory (`LOG_BUFFER_SIZE`).
    pub buffer_size: usize,
    pub batch_size: usize,
    pub batch_window: Duration,
    /// Deadline for one database operation.
    pub op_timeout: Duration,
    /// Batches written at once (`LOG_WRITER_CONCURRENCY`; SQLite: one, `Sink::concurrency`).
    pub concurrency: usize,
    /// How the writer thread is scheduled beside request threads (`LOG_WRITER_NICE`).
    pub priority: WriterPriority,
    /// How long rows are kept (`REQUEST_LOG_RETENTION_DAYS`); see `retention`.
    pub retention: Retention,
}

/// Records in memory that make a whole batch, which wakes a writer waiting out its window:
/// `LOG_BATCH_SIZE`, or at most half the memory buffer, so that the other half takes what
/// comes while the writer wakes and writes. A batch larger than that would never fill in
/// memory without dropping records, and memory holds records with the spool on too, once
/// the spool refuses them (its bound reached, or the disk failing).
fn memory_batch(config: &WriterConfig) -> u64 {
    config.batch_size.min(config.buffer_size / 2).max(1) as u64
}

/// Starts the writer; returns the request path's handle, the writer, and the database
/// health probe for the caller to run until `stopping` fires.
pub fn start(
    sink: Sink,
    breaker: Arc<CircuitBreaker>,
    config: WriterConfig,
    spooling: Option<Spooling>,
    stopping: crate::shutdown::Stopping,
) -> (RequestLog, Writer, impl std::future::Future<Output = ()> + Send + 'static) {
    let (journal, reader, dead_letter) = match spooling {
        Some(s) => (Some(s.journal), Some(s.reader), Some(s.dead_letter)),
        None => (None, None, None),
    };
    let shared = Arc::new(Shared {
        journal,
        memory: Mutex::new(VecDeque::new()),
        capacity: config.buffer_size.max(1),
        appended: AtomicU64::new(0),
        committed: AtomicU64::new(0),
        held: AtomicUsize::new(0),
        wake: Notify::new(),
        full: Notify::new(),
        batch_size: config.batch_size.max(1) as u64,
        memory_batch: memory_batch(&config),
        closed: AtomicBool::new(false),
        closing: Notify::new(),
        full_warning: Throttle::new(Duration::from_secs(10)),
        journal_warning: Throttle::new(Duration::from_secs(10)),
        spooled: counter!(LOG_SPOOLED),
    });
    let available = Arc::new(AtomicBool::new(false));
    let config = WriterConfig { concurrency: sink.concurrency(config.concurrency), ..config };
    let state = WriterState {
        sink: sink.clone(),
        breaker: Arc::clone(&breaker),
        config,
        shared: Arc::clone(&shared),
        reader,
        dead_letter,
        commits: VecDeque::new(),
        next_ticket: 0,
        migrated: false,
        outage: false,
        flushed_since_outage: 0,
        available: Arc::clone(&available),
        down_warning: Throttle::new(Duration::from_secs(10)),
        read_warning: Throttle::new(Duration::from_secs(10)),
    };
    // Partitions ahead and retention, on the writer's thread: off the request path, at its priority.
    retention::export_setting(config.retention);
    let maintenance = retention::keep(sink.clone(), config.retention);
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new().name("request-log-writer".into()).spawn(move || {
        // Its own thread and runtime: decoding, binding and encoding batches never hold up
        // a thread that serves requests, and the kernel schedules it at a lower priority.
        lower_priority(config.priority);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        if let Ok(runtime) = runtime {
            runtime.block_on(async {
                tokio::select! {
                    () = state.run() => {}
                    () = maintenance => {}
                    _ = stop => {}
                }
            });
        }
        let _ = done_tx.send(());
    });
    if let Err(error) = spawned {
        tracing::error!(error = %error, "Cannot start the request-log writer thread");
    }
    let probe = probe(sink.clone(), breaker, Arc::clone(&available), config.op_timeout, stopping);
    (
        RequestLog { shared: Arc::clone(&shared), backend: sink.backend() },
        Writer { done, stop: stop_tx, available, shared, sink },
        probe,
    )
}

/// How a background thread (the request-log writer, sqlx's SQLite thread) is scheduled
/// beside the threads that serve requests: `LOG_WRITER_NICE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterPriority {
    /// Linux's idle scheduling class (`SCHED_IDLE`, the default): a request thread that
    /// wakes always takes the CPU from it at once, and the kernel treats a core running only
    /// it as free when it places a waking thread. It still gets a small share of a busy CPU,
    /// and the spool absorbs what it cannot write meanwhile.
    Idle,
    /// The ordinary class at this `nice` (0-19): a woken request thread may wait for it to
    /// finish its time slice, up to a few milliseconds of a batch's inserts.
    Nice(i32),
}

impl std::str::FromStr for WriterPriority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("idle") {
            return Ok(Self::Idle);
        }
        match s.trim().parse::<i32>() {
            Ok(n) if (0..=19).contains(&n) => Ok(Self::Nice(n)),
            _ => Err(format!("expected `idle` or a nice value from 0 to 19, got `{s}`")),
        }
    }
}

impl std::fmt::Display for WriterPriority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Idle => f.write_str("idle"),
            Self::Nice(n) => write!(f, "{n}"),
        }
    }
}

/// Schedules the calling thread at `priority` (threads it starts inherit it). Where the
/// idle class is refused (a seccomp profile, a kernel without it), the thread runs at nice
/// 19 instead, and says so once at debug level.
pub(crate) fn lower_priority(priority: WriterPriority) {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
    let nice = match priority {
        WriterPriority::Nice(n) => n,
        WriterPriority::Idle => {
            let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            match thread_priority::set_thread_priority_and_policy(
                thread_priority::thread_native_id(),
                ThreadPriority::Min,
                idle,
            ) {
                Ok(()) => return,
                Err(error) => {
                    tracing::debug!(error = ?error, "Cannot put a background thread in the idle scheduling class; nice 19 instead");
                    19
                }
            }
        }
    };
    let tid = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(tid), nice) {
        tracing::debug!(error = %error, "Cannot lower a background thread's priority");
    }
}

/// The running writer.
pub struct Writer {
    done: tokio::sync::oneshot::Receiver<()>,
    stop: tokio::sync::oneshot::Sender<()>,
    available: Arc<AtomicBool>,
    shared: Arc<Shared>,
    sink: Sink,
}

impl Writer {
    /// Whether the last database round trip worked (`/readyz` `checks.database_available`).
    pub fn availability(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.available)
    }

    /// Stops the writer after it has written what it can, waiting at most `within`. What
    /// the journal holds stays there for the next start; memory records not written are
    /// counted in `dropped_logs_total` and logged.
    pub async fn finish(self, within: Duration) {
        let Writer { mut done, stop, shared, sink, .. } = self;
        shared.closed.store(true, Ordering::SeqCst);
        shared.wake.notify_one();
        shared.closing.notify_one();
        let finished = tokio::time::timeout(within, &mut done).await.is_ok();
        if !finished {
            // Cut the writer short and wait for it to let go of what it holds.
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
        }
        // Memory records the writer held (a write cut short) are gone; those still queued
        // go to the journal if there is one.
        let mut lost = shared.held.load(Ordering::Relaxed) as u64;
        let mut kept = 0u64;
        let mut buf = Vec::new();
        for record in shared.take_memory(usize::MAX) {
            let kept_on_disk = shared.journal.as_ref().is_some_and(|j| {
                record.with_flags(SPOOLED, &mut buf);
                j.append(&buf).is_ok()
            });
            if kept_on_disk { kept += 1 } else { lost += 1 }
        }
        // Closing the pool lets SQLite merge its write-ahead log into the database file and
        // remove it, so a clean exit leaves `request_log.db` alone, with no -wal or -shm.
        sink.close().await;
        let spooled = shared.journal.as_ref().map_or(0, Journal::backlog_bytes);
        let outcome = if finished { "finished" } else { "aborted" };
        tracing::info!(task = "request_log_writer", outcome, unwritten = lost, "Background task stopped");
        if spooled > 0 {
            tracing::warn!(
                spool_bytes = spooled,
                moved_from_memory = kept,
                "Request-log records left in the spool; they are written at the next start"
            );
        }
        if lost > 0 {
            counter!(DROPPED_LOGS).increment(lost);
            tracing::error!(lost, "Database unavailable at shutdown; request-log records not written");
        }
    }
}

/// Checks the database every second; success closes the breaker at once so the backlog
/// drains without waiting out the breaker's open period.
async fn probe(
    sink: Sink,
    breaker: Arc<CircuitBreaker>,
    available: Arc<AtomicBool>,
    timeout: Duration,
    mut stopping: crate::shutdown::Stopping,
) {
    let mut ticks = crate::shutdown::every(Duration::from_secs(1));
    while stopping.tick(&mut ticks).await {
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

/// Where a batch came from, so its success can be recorded there.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// Journal records: commit ticket.
    Journal(u64),
    Memory,
}

/// Rows on their way to the database.
struct Batch {
    records: Vec<Encoded>,
    origin: Origin,
    /// Records that count as replayed once written.
    replayed: usize,
    /// Times the database rejected it.
    rejections: u32,
}

/// A journal read waiting for its rows to be written, in read order.
struct Commit {
    ticket: u64,
    end: Position,
    records: u64,
    done: bool,
}

/// How one write went.
enum Outcome {
    Written,
    /// The database is away (or slow, or the table missing): try again later.
    Unavailable {
        error: String,
        remigrate: bool,
    },
    /// The database refused these rows: retrying as they are will not help.
    Rejected(String),
}

struct WriterState {
    sink: Sink,
    breaker: Arc<CircuitBreaker>,
    config: WriterConfig,
    shared: Arc<Shared>,
    reader: Option<Reader>,
    dead_letter: Option<Spool>,
    commits: VecDeque<Commit>,
    next_ticket: u64,
    migrated: bool,
    outage: bool,
    flushed_since_outage: usize,
    available: Arc<AtomicBool>,
    down_warning: Throttle,
    read_warning: Throttle,
}

async fn write_batch(sink: Sink, batch: &[Encoded], timeout: Duration) -> Outcome {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, sink.write(batch)).await;
    histogram!(DB_DURATION, "operation" => "insert").record(started.elapsed().as_secs_f64());
    let outcome = match result {
        Ok(Ok(_)) => Outcome::Written,
        Ok(Err(WriteError::Rejected(error))) => Outcome::Rejected(error),
        Ok(Err(WriteError::Unavailable { error, table_missing })) => {
            Outcome::Unavailable { error, remigrate: table_missing }
        }
        Err(_) => Outcome::Unavailable { error: format!("timed out after {timeout:?}"), remigrate: false },
    };
    let status = if matches!(outcome, Outcome::Unavailable { .. }) { "error" } else { "success" };
    counter!(DB_OPERATIONS, "operation" => "insert", "status" => status).increment(1);
    outcome
}

impl WriterState {
    async fn run(mut self) {
        let mut in_flight: JoinSet<(Batch, Outcome)> = JoinSet::new();
        let mut retry: VecDeque<Batch> = VecDeque::new();
        let mut pause = Pause::default();
        let mut spare: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
        // When the writer began gathering the rows of its next batch: a part batch waits
        // until the batch window has passed since then (issue 34: at 2,000 req/s, writing
        // whatever arrived during the last write doubled the statements and their
        // round trips to SQLite's thread). A full batch goes at once, and so does the next
        // read after a full one (a backlog: an outage's, or a replay at start-up).
        let mut gathering_since = Instant::now();
        let mut last_full = false;
        // Rows of the batches being written: `waiting` counts them too.
        let mut in_flight_rows = 0u64;
        // The schema exists from start-up, not from the first request: an operator's first
        // query of a quiet deployment finds an empty inference_logs, not "no such table".
        // If the database is away, the first batch tries again.
        if !self.migrated {
            self.migrate().await;
        }
        loop {
            let closing = self.shared.closed.load(Ordering::SeqCst);
            self.keep_spare_ready(&mut spare);
            self.update_gauges();
            let paused = pause.active();
            if closing
                && pause.failed_while_closing >= SHUTDOWN_TRIES
                && in_flight.is_empty()
                && self.shared.journal.is_some()
            {
                // The database failed during shutdown: after a few tries, stop. What is not
                // written stays in the journal for the next start. (Without one, keep trying
                // until `finish` gives up: what it then holds is lost, and counted.) The
                // tries outlast a start-up's slow first connection or migration, which the
                // full suite met on a busy machine.
                self.release_held(retry);
                return;
            }
            // Fill the writer's slots: retries first, then the journal, then memory, once a
            // whole batch waits or the window since the last one has passed.
            let mut found_none = false;
            while !paused && in_flight.len() < self.config.concurrency {
                let out = in_flight_rows + retry.iter().map(|b| b.records.len() as u64).sum::<u64>();
                let take = closing || last_full || self.batch_ready(gathering_since, out);
                let batch = match retry.pop_front() {
                    Some(batch) => batch,
                    None if !take => break,
                    None => match self.next_batch() {
                        Some(batch) => {
                            gathering_since = Instant::now();
                            last_full = batch.records.len() as u64 >= self.shared.batch_size;
                            batch
                        }
                        None => {
                            found_none = true;
                            last_full = false;
                            break;
                        }
                    },
                };
                if (!self.migrated && !self.migrate().await) || !self.breaker.try_acquire() {
                    retry.push_front(batch);
                    pause.failed(closing);
                    break;
                }
                let sink = self.sink.clone();
                let timeout = self.config.op_timeout;
                in_flight_rows += batch.records.len() as u64;
                in_flight.spawn(async move {
                    let outcome = write_batch(sink, &batch.records, timeout).await;
                    (batch, outcome)
                });
            }
            if in_flight.is_empty() {
                let nothing_left = retry.is_empty() && self.shared.waiting() == 0;
                if closing && nothing_left {
                    return;
                }
                // Paused: until the pause ends. Gathering a part batch: until its window
                // ends or a whole batch waits (a record alone only leaves a permit on
                // `wake`; `full` fires once a batch). Found nothing to
                // read: until a record or the close comes, and no sooner: both notify with
                // `notify_one`, whose permit waits for this select if it comes first, so an
                // idle writer needs no timer (issue 34: an idle worker's wake-ups).
                let resume_at = match pause.until {
                    Some(t) => Some(t),
                    None if found_none => None,
                    None => Some(tokio::time::Instant::from_std(gathering_since + self.config.batch_window)),
                };
                let resume = async {
                    match resume_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                let gathering = pause.until.is_none() && !found_none;
                let woken = tokio::select! {
                    () = self.shared.wake.notified(), if resume_at.is_none() => true,
                    () = self.shared.full.notified(), if gathering => false,
                    () = resume => { pause.until = None; false }
                    () = self.shared.closing.notified() => false,
                };
                if woken {
                    // The first record after a quiet spell: give a burst the window to
                    // fill a batch.
                    gathering_since = Instant::now();
                }
                continue;
            }
            let Some(joined) = in_flight.join_next().await else { continue };
            in_flight_rows = match &joined {
                Ok((batch, _)) => in_flight_rows.saturating_sub(batch.records.len() as u64),
                // A write task that panicked does not say how many rows it had.
                Err(_) if in_flight.is_empty() => 0,
                Err(_) => in_flight_rows,
            };
            let Ok((batch, outcome)) = joined else {
                // A write task panicked: its rows are still in the journal (replayed at the
                // next start) or, from memory, lost: say so.
                tracing::error!("Request-log write task failed");
                continue;
            };
            match outcome {
                Outcome::Written => {
                    self.breaker.record_success();
                    self.available.store(true, Ordering::Relaxed);
                    crate::telemetry::metrics::record_rows_written(batch.records.len());
                    self.written(batch);
                }
                Outcome::Unavailable { error, remigrate } => {
                    self.migrated &= !remigrate;
                    if self.went_away() {
                        tracing::warn!(
                            error,
                            rows = batch.records.len(),
                            "Database unavailable; buffering request logs"
                        );
                    }
                    retry.push_back(batch);
                    pause.failed(closing);
                }
                Outcome::Rejected(error) => {
                    // The database answered: not an outage.
                    self.breaker.record_success();
                    let mut batch = batch;
                    batch.rejections += 1;
                    if batch.rejections < POISON_ATTEMPTS {
                        retry.push_back(batch);
                        pause.failed(closing);
                    } else {
                        match self.isolate(batch, error).await {
                            Ok(batch) => self.written(batch),
                            Err(rest) => {
                                retry.push_back(rest);
                                pause.failed(closing);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Whether the writer takes the next batch now: a whole one waits (in all, or in
    /// memory), or the batch window since it began gathering has passed.
    /// `out`: rows already taken (being written, or waiting to be retried).
    fn batch_ready(&self, gathering_since: Instant, out: u64) -> bool {
        gathering_since.elapsed() >= self.config.batch_window
            || self.shared.waiting().saturating_sub(out) >= self.shared.batch_size
            || self.shared.memory_len() as u64 >= self.shared.memory_batch
    }

    /// The next batch from the journal, else from memory.
    fn next_batch(&mut self) -> Option<Batch> {
        if let Some(reader) = &mut self.reader {
            match reader.read(self.config.batch_size) {
                Ok(read) if !read.frames.is_empty() || read.corrupt > 0 => {
                    let mut records = Vec::with_capacity(read.frames.len());
                    let mut replayed = 0;
                    let mut corrupt = read.corrupt;
                    for frame in &read.frames {
                        match Encoded::new(read.payload(frame)) {
                            Ok((record, flags)) => {
                                replayed += usize::from(frame.recovered || flags & SPOOLED != 0);
                                records.push(record);
                            }
                            Err(_) => corrupt += 1,
                        }
                    }
                    if corrupt > 0 {
                        counter!(DROPPED_LOGS).increment(corrupt as u64);
                        tracing::warn!(corrupt, "Skipped unreadable log spool records (torn or corrupt)");
                    }
                    let ticket = self.next_ticket;
                    self.next_ticket += 1;
                    let fresh = read.frames.iter().filter(|f| !f.recovered).count() as u64;
                    self.commits.push_back(Commit { ticket, end: read.end, records: fresh, done: false });
                    let batch = Batch { records, origin: Origin::Journal(ticket), replayed, rejections: 0 };
                    if batch.records.is_empty() {
                        self.written(batch);
                        return self.next_batch();
                    }
                    return Some(batch);
                }
                Ok(_) => {}
                Err(error) => {
                    if self.read_warning.ready() {
                        tracing::error!(error = %error, "Cannot read the log spool");
                    }
                }
            }
        }
        let records = self.shared.take_memory(self.config.batch_size);
        (!records.is_empty()).then_some(Batch { records, origin: Origin::Memory, replayed: 0, rejections: 0 })
    }

    /// The batch's rows are in the database (or dead-lettered): record it where it came from.
    fn written(&mut self, batch: Batch) {
        let n = batch.records.len();
        if batch.replayed > 0 {
            counter!(LOG_REPLAYED).increment(batch.replayed as u64);
        }
        match batch.origin {
            Origin::Memory => {
                self.shared.held.fetch_sub(n, Ordering::Relaxed);
            }
            Origin::Journal(ticket) => {
                if let Some(c) = self.commits.iter_mut().find(|c| c.ticket == ticket) {
                    c.done = true;
                }
                let mut upto = None;
                while self.commits.front().is_some_and(|c| c.done) {
                    if let Some(c) = self.commits.pop_front() {
                        self.shared.committed.fetch_add(c.records, Ordering::Relaxed);
                        upto = Some(c.end);
                    }
                }
                if let (Some(upto), Some(reader)) = (upto, &self.reader)
                    && let Err(error) = reader.commit(upto)
                {
                    tracing::error!(error = %error, "Cannot record progress in the log spool");
                }
            }
        }
        if self.outage {
            self.flushed_since_outage += n;
            if self.shared.waiting() == 0 {
                let flushed = std::mem::take(&mut self.flushed_since_outage);
                self.outage = false;
                tracing::info!(flushed, backend = self.sink.backend(), "Flushed {flushed} logs");
            }
        }
    }

    /// Splits a batch the database keeps rejecting until the rejected rows are found; they
    /// go to the dead-letter file, the rest to the database. `Err` with what is left when
    /// the database goes away meanwhile.
    async fn isolate(&mut self, batch: Batch, error: String) -> Result<Batch, Batch> {
        let Batch { records, origin, replayed, rejections } = batch;
        let mut parts = vec![records];
        let mut dead = Vec::new();
        let mut written = Vec::new();
        while let Some(part) = parts.pop() {
            match write_batch(self.sink.clone(), &part, self.config.op_timeout).await {
                Outcome::Written => written.extend(part),
                Outcome::Rejected(_) if part.len() == 1 => dead.extend(part),
                Outcome::Rejected(_) => {
                    let mut part = part;
                    let half = part.split_off(part.len() / 2);
                    parts.push(half);
                    parts.push(part);
                }
                Outcome::Unavailable { .. } => {
                    // Try again later, all of it: rows written meanwhile are not duplicated.
                    let mut rest: Vec<Encoded> = parts.into_iter().flatten().collect();
                    rest.extend(part);
                    rest.extend(written);
                    rest.extend(dead);
                    return Err(Batch { records: rest, origin, replayed, rejections });
                }
            }
        }
        crate::telemetry::metrics::record_rows_written(written.len());
        self.dead_letter(&dead, &error);
        written.extend(dead);
        Ok(Batch { records: written, origin, replayed, rejections })
    }

    fn dead_letter(&mut self, encoded: &[Encoded], error: &str) {
        if encoded.is_empty() {
            return;
        }
        counter!(LOG_DEAD_LETTER).increment(encoded.len() as u64);
        // The file holds JSON lines a person can read and replay: each record decoded.
        // (Every batch record was checked to decode when it was made.)
        let rows: Vec<LogRecord> = encoded.iter().filter_map(|r| r.as_row().ok()).map(|r| r.to_record()).collect();
        let undecodable = encoded.len() - rows.len();
        if undecodable > 0 {
            counter!(DROPPED_LOGS).increment(undecodable as u64);
            tracing::error!(undecodable, "Rejected request-log records that do not decode; dropped");
        }
        let rows = rows.as_slice();
        let kept = self.dead_letter.as_mut().map(|file| (file.path().to_path_buf(), file.append(rows, true)));
        match kept {
            Some((path, Ok(0))) => {
                tracing::error!(rows = rows.len(), path = %path.display(), error, "Database rejected request-log rows; moved them to the dead-letter file");
            }
            Some((path, result)) => {
                let lost = result.as_ref().map_or(rows.len(), |r| *r);
                counter!(DROPPED_LOGS).increment(lost as u64);
                tracing::error!(rows = rows.len(), lost, path = %path.display(), error, "Database rejected request-log rows; the dead-letter file could not take them all");
            }
            None => {
                counter!(DROPPED_LOGS).increment(rows.len() as u64);
                tracing::error!(
                    rows = rows.len(),
                    error,
                    "Database rejected request-log rows; no spool directory for a dead-letter file, rows dropped"
                );
            }
        }
    }

    /// Creates the schema; false (and an outage) when the database is away.
    async fn migrate(&mut self) -> bool {
        let result = tokio::time::timeout(self.config.op_timeout, self.sink.migrate()).await;
        match result {
            Ok(Ok(())) => {
                self.migrated = true;
                true
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("timed out after {:?}", self.config.op_timeout),
                };
                if self.went_away() {
                    tracing::warn!(error, "Database unavailable; buffering request logs");
                }
                false
            }
        }
    }

    /// A database operation failed for want of the database: the breaker counts it, the
    /// readiness check and the outage flag say so. True when the (throttled) warning is due.
    fn went_away(&mut self) -> bool {
        self.breaker.record_failure();
        self.available.store(false, Ordering::Relaxed);
        self.outage = true;
        self.down_warning.ready()
    }

    /// Memory records held for a retry are handed back for `finish` to keep or count.
    fn release_held(&self, retry: VecDeque<Batch>) {
        for batch in retry {
            if matches!(batch.origin, Origin::Memory) {
                self.shared.held.fetch_sub(batch.records.len(), Ordering::Relaxed);
                if let Ok(mut q) = self.shared.memory.lock() {
                    q.extend(batch.records);
                }
            }
        }
    }

    /// Allocates the journal's next segment in the background whenever it has none ready.
    fn keep_spare_ready(&self, spare: &mut Option<tokio::task::JoinHandle<std::io::Result<()>>>) {
        let Some(journal) = &self.shared.journal else { return };
        if spare.as_ref().is_some_and(|h| !h.is_finished()) || !journal.wants_spare() {
            return;
        }
        let journal = journal.clone();
        *spare = Some(tokio::task::spawn_blocking(move || {
            let made = journal.prepare_spare();
            if let Err(error) = &made {
                tracing::warn!(path = %journal.dir().display(), error = %error, "Cannot allocate the next log spool segment");
            }
            made
        }));
    }

    fn update_gauges(&self) {
        gauge!(LOG_BUFFER_SIZE).set(self.shared.waiting() as f64);
        if let Some(journal) = &self.shared.journal {
            gauge!(LOG_SPOOL_BYTES).set(journal.backlog_bytes() as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::resilience::BreakerConfig;

    fn record(i: usize) -> LogRecord {
        LogRecord {
            text_hash: Some(format!("{i:064x}")),
            prediction: Some("positive".into()),
            confidence: Some(0.9),
            ..LogRecord::new(format!("req-{i}"), "w1", "v1")
        }
    }

    /// Past the spool's bound (or with the disk failing) records wait in memory. With
    /// `LOG_BATCH_SIZE` above `LOG_BUFFER_SIZE` a whole batch never waited there, so the
    /// writer slept out its window while the buffer overflowed and dropped records. Here the
    /// window is ten minutes, the spool 64 KiB (a few hundred records) and the buffer 200
    /// records, 2,000 of them a millisecond apart: every one must be a row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_spool_s_bound_a_full_buffer_wakes_the_writer_whatever_the_batch_size() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::scratch_sqlite(dir.path(), Duration::from_secs(5)).await;
        let (spooling, _) = open_spool(&dir.path().join("spool"), "w1", 64 << 10).unwrap();
        let breaker = CircuitBreaker::new(
            "sqlite",
            BreakerConfig {
                enabled: true,
                failure_threshold: 5,
                open_for: Duration::from_secs(60),
                half_open_successes: 1,
            },
        );
        let config = WriterConfig {
            buffer_size: 200,
            batch_size: 5000,
            batch_window: Duration::from_secs(600),
            op_timeout: Duration::from_secs(30),
            concurrency: 1,
            priority: WriterPriority::Nice(0),
            retention: Retention::days(0),
        };
        let (log, writer, _probe) =
            start(sink.clone(), Arc::new(breaker), config, Some(spooling), crate::shutdown::Stopping::never());
        let sent = 2000;
        for i in 0..sent {
            log.record(record(i));
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Finishing writes what is left and closes the sink.
        writer.finish(Duration::from_secs(60)).await;
        let pool =
            sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("log.db").display())).await.unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM inference_logs").fetch_one(&pool).await.unwrap();
        assert_eq!(rows, sent as i64, "records were dropped while the writer slept out its window");
    }
}
