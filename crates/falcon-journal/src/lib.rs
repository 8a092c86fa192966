//! An append-only journal of opaque records, kept in memory-mapped segment files, that
//! survives the death of the process writing it.
//!
//! Falcon's request log appends every record here before the response goes out: a copy
//! into a shared file mapping, no system call, so a `kill -9` or the OOM killer loses
//! nothing the process had answered for (the kernel keeps the mapped pages and writes
//! them back). One consumer, the [`Reader`], reads the records in order with `pread`, and
//! [`Reader::commit`] records how far the database has them; segments wholly before that
//! point are deleted. On the next start [`Journal::open`] finds the uncommitted tail and
//! the reader replays it. A machine crash can still lose what the kernel had not written
//! back: the journal does not `fsync`.
//!
//! Layout: `<name>-<seq:020>.seg` files of `segment_bytes` each (allocated up front, so
//! a full disk is an error at creation, never a fault on a mapped page), a 16-byte header
//! (`FALCONJ1` and reserved bytes), then frames `[len u32][crc32c u32][payload]`, little
//! endian. The length is stored last, so a frame cut short by a crash reads as the end of
//! the segment; the checksum catches pages a machine crash left half written. The commit
//! point is `<name>.commit` (segment and offset, 16 bytes); `<name>.lock` holds an
//! exclusive lock while a process has the journal open.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{Ordering, compiler_fence};
use std::sync::{Arc, Mutex, MutexGuard};

use memmap2::MmapMut;

const MAGIC: &[u8; 8] = b"FALCONJ1";
/// Bytes before the first frame of a segment.
pub const SEGMENT_HEADER: u64 = 16;
const FRAME_HEADER: usize = 8;
/// The largest payload one frame may hold.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// How much the reader reads from a segment at a time (more when one frame is larger).
const READ_CHUNK: u64 = 256 << 10;

/// CRC-32C of a payload (the SSE 4.2 / ARMv8 instruction where the CPU has it).
fn checksum(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}

/// Sizes of the journal.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Size of one segment file.
    pub segment_bytes: u64,
    /// Bound on the segment files together (spare included); an append that would need
    /// more fails with [`AppendError::Full`].
    pub max_bytes: u64,
}

impl Options {
    /// A segment size that suits `max_bytes`: an eighth of it, between 64 KiB and 1 MiB.
    /// The active segment's pages count in the process's resident memory while it is
    /// mapped, and so does the spare's (faulted in ahead), so segments stay small (issue 34:
    /// 1 MiB instead of 2 took 2 MB off a busy worker's RSS); rotating to a ready spare is a
    /// swap of mappings.
    pub fn for_max_bytes(max_bytes: u64) -> Self {
        let segment_bytes = (max_bytes / 8).clamp(64 << 10, 1 << 20);
        Self { segment_bytes, max_bytes }
    }
}

/// A place in the journal: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Why an append did not happen.
#[derive(Debug)]
pub enum AppendError {
    /// `max_bytes` reached: the record was not stored.
    Full,
    /// Empty, or larger than [`MAX_PAYLOAD`] or a segment.
    BadSize(usize),
    /// A new segment could not be created.
    Io(io::Error),
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Full => write!(f, "journal full (max bytes reached)"),
            Self::BadSize(n) => write!(f, "a record of {n} bytes does not fit a journal frame"),
            Self::Io(e) => write!(f, "cannot create a journal segment: {e}"),
        }
    }
}

impl std::error::Error for AppendError {}

/// The writing side: cheap to clone, safe to share between threads.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    name: String,
    options: Options,
    state: Mutex<State>,
    _lock: File,
}

struct State {
    active: Active,
    /// The next segment, allocated, mapped and faulted in ahead of need, so that rotation
    /// on the request path is a swap: no system call, no file-system lock.
    spare: Option<Active>,
    /// Mappings of sealed segments, unmapped off the request path by `prepare_spare`.
    retired: Vec<MmapMut>,
    next_seq: u64,
    /// Segments not yet deleted, by sequence number.
    live: BTreeMap<u64, Live>,
    /// Bytes the segment files take (spare included).
    disk_bytes: u64,
    /// Segments below this were left by an earlier run.
    first_seq_this_run: u64,
    committed: Position,
}

#[derive(Debug, Clone, Copy)]
struct Live {
    /// Bytes written (header and frames); the file size for segments of an earlier run.
    used: u64,
    size: u64,
}

struct Active {
    seq: u64,
    map: MmapMut,
    len: u64,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave a frame half published (the length is
    // written last), so the state is still good.
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{}-{seq:020}.seg", self.name))
    }

    fn commit_path(&self) -> PathBuf {
        self.dir.join(format!("{}.commit", self.name))
    }

    /// Creates a segment file of `segment_bytes` at `path`, its blocks allocated.
    fn allocate(&self, path: &Path) -> io::Result<File> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        let size = self.options.segment_bytes;
        let made = match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size) {
            Ok(()) => Ok(()),
            // A file system without fallocate: a sparse file (a full disk then surfaces
            // when the kernel writes the pages back, not here).
            Err(rustix::io::Errno::OPNOTSUPP) => file.set_len(size),
            Err(e) => Err(io::Error::from(e)),
        }
        .and_then(|()| {
            let mut header = [0u8; SEGMENT_HEADER as usize];
            header[..8].copy_from_slice(MAGIC);
            file.write_all_at(&header, 0)
        });
        match made {
            Ok(()) => Ok(file),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Maps `file` (already at its final path) as segment `seq`.
    fn activate(seq: u64, file: &File) -> io::Result<Active> {
        // SAFETY: the mapping is of a segment file this process created and holds the
        // journal lock on; nothing truncates or resizes it while it is mapped, and every
        // access goes through the `MmapMut` under the state mutex.
        #[allow(unsafe_code)]
        let map = unsafe { MmapMut::map_mut(file)? };
        Ok(Active { seq, map, len: SEGMENT_HEADER })
    }

    /// Seals the active segment and starts the next one: the spare if one is ready, else a
    /// segment made here and now.
    fn rotate(&self, state: &mut State, bounded: bool) -> Result<(), AppendError> {
        let size = self.options.segment_bytes;
        let next = match state.spare.take() {
            Some(spare) if spare.seq > state.active.seq || state.active.seq == u64::MAX => spare,
            stale => {
                // None ready (or one overtaken by a rotation like this one while it was
                // being made: its number is behind, so it is thrown away).
                if let Some(stale) = stale {
                    let _ = std::fs::remove_file(self.segment_path(stale.seq));
                    state.disk_bytes -= size;
                }
                if bounded && state.disk_bytes + size > self.options.max_bytes {
                    return Err(AppendError::Full);
                }
                let seq = state.next_seq;
                let path = self.segment_path(seq);
                let file = self.allocate(&path).map_err(AppendError::Io)?;
                let next = Self::activate(seq, &file).map_err(|e| {
                    let _ = std::fs::remove_file(&path);
                    AppendError::Io(e)
                })?;
                state.disk_bytes += size;
                state.next_seq = seq + 1;
                next
            }
        };
        state.live.insert(next.seq, Live { used: SEGMENT_HEADER, size });
        let sealed = std::mem::replace(&mut state.active, next);
        state.retired.push(sealed.map);
        Ok(())
    }
}

/// What [`Journal::open`] found from an earlier run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recovered {
    /// Segments holding records not yet committed.
    pub segments: usize,
    /// Bytes of those records (frame headers included).
    pub bytes: u64,
}

/// Where segment `seq`'s uncommitted records start, given the commit point.
fn first_record(seq: u64, committed: Position) -> u64 {
    if seq == committed.segment { committed.offset.max(SEGMENT_HEADER) } else { SEGMENT_HEADER }
}

/// The end of the last whole frame of a segment file of `size` bytes: the first zero
/// length, or a frame that would run past the file, ends it. Checksums are left to the
/// reader, which counts a corrupt frame.
fn frames_end(file: &File, size: u64) -> io::Result<u64> {
    let mut at = SEGMENT_HEADER;
    let mut header = [0u8; 4];
    while at + FRAME_HEADER as u64 <= size {
        file.read_exact_at(&mut header, at)?;
        let len = u64::from(u32::from_le_bytes(header));
        if len == 0 || len > MAX_PAYLOAD as u64 || at + FRAME_HEADER as u64 + len > size {
            break;
        }
        at += FRAME_HEADER as u64 + len;
    }
    Ok(at.min(size))
}

impl Drop for Shared {
    /// A clean close leaves only what has records to replay: the spare, an active segment
    /// with nothing in it, and segments the database has every record of are deleted, and
    /// the rest are cut to their records (segments are allocated whole, up front). Errors
    /// are left for the next open, which deletes what has nothing to replay.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Unmapped first: nothing is cut while this process still maps it.
        state.retired.clear();
        let spare = state.spare.take().map(|spare| spare.seq);
        if let Ok(none) = MmapMut::map_anon(1) {
            drop(std::mem::replace(&mut state.active.map, none));
        }
        let (live, committed) = (std::mem::take(&mut state.live), state.committed);
        for (seq, live) in live {
            let path = self.segment_path(seq);
            let _ = if live.used <= first_record(seq, committed) {
                std::fs::remove_file(&path)
            } else if live.used < live.size {
                OpenOptions::new().write(true).open(&path).and_then(|file| file.set_len(live.used))
            } else {
                Ok(())
            };
        }
        if let Some(seq) = spare {
            let _ = std::fs::remove_file(self.segment_path(seq));
        }
    }
}

impl Journal {
    /// Opens the journal `name` in `dir` (created if missing), taking its lock. Segments an
    /// earlier run left uncommitted are kept for the reader; appends go to a new segment.
    pub fn open(dir: &Path, name: &str, options: Options) -> io::Result<(Journal, Reader, Recovered)> {
        if options.segment_bytes < SEGMENT_HEADER + FRAME_HEADER as u64 + 1 || options.max_bytes < options.segment_bytes
        {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "journal segment or bound too small"));
        }
        std::fs::create_dir_all(dir)?;
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(format!("{name}.lock")))?;
        lock_file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("journal {name} in {} is held by another process", dir.display()),
            ),
            std::fs::TryLockError::Error(e) => e,
        })?;
        let committed = read_commit(&dir.join(format!("{name}.commit")))?;

        let mut live = BTreeMap::new();
        let mut disk_bytes = 0;
        let prefix = format!("{name}-");
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(seq) = file_name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if seq < committed.segment {
                std::fs::remove_file(entry.path())?;
                continue;
            }
            let file = File::open(entry.path())?;
            let size = file.metadata()?.len();
            let used = frames_end(&file, size)?;
            if used <= first_record(seq, committed) {
                // Nothing to replay: a spare never used, a failed start's first segment, or
                // one the database has every record of.
                std::fs::remove_file(entry.path())?;
                continue;
            }
            disk_bytes += size;
            live.insert(seq, Live { used, size });
        }
        let recovered = Recovered {
            segments: live.len(),
            bytes: live.iter().map(|(&seq, l)| l.used - first_record(seq, committed)).sum(),
        };
        // New segments come after everything on disk and after the commit point, so a commit
        // point of an earlier run never applies to a segment of this one.
        let first_seq_this_run = live.keys().next_back().map_or(0, |last| last + 1).max(committed.segment + 1);
        let reader_at = match live.keys().next() {
            Some(&first) if first > committed.segment => Position { segment: first, offset: SEGMENT_HEADER },
            Some(_) => Position { segment: committed.segment, offset: committed.offset.max(SEGMENT_HEADER) },
            None => Position { segment: first_seq_this_run, offset: SEGMENT_HEADER },
        };

        let state = State {
            // Replaced by the first segment below, before anyone can see it.
            active: Active { seq: u64::MAX, map: MmapMut::map_anon(1)?, len: 0 },
            spare: None,
            retired: Vec::new(),
            next_seq: first_seq_this_run,
            live,
            disk_bytes,
            first_seq_this_run,
            committed: reader_at,
        };
        let shared = Shared {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            options,
            state: Mutex::new(state),
            _lock: lock_file,
        };
        // An earlier run's segments may fill the bound; a restart still gets a segment.
        shared.rotate(&mut lock(&shared.state), false).map_err(|e| match e {
            AppendError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        })?;
        let shared = Arc::new(shared);
        let reader = Reader { shared: Arc::clone(&shared), at: reader_at, file: None, buf: Vec::new() };
        Ok((Journal { shared }, reader, recovered))
    }

    /// Appends one record. Once this returns `Ok`, the record survives the process dying.
    pub fn append(&self, payload: &[u8]) -> Result<(), AppendError> {
        let len = payload.len();
        let frame = (FRAME_HEADER + len) as u64;
        if len == 0 || len > MAX_PAYLOAD || frame > self.shared.options.segment_bytes - SEGMENT_HEADER {
            return Err(AppendError::BadSize(len));
        }
        let crc = checksum(payload);
        let mut state = lock(&self.shared.state);
        if state.active.len + frame > state.active.map.len() as u64 {
            self.shared.rotate(&mut state, true)?;
        }
        let at = state.active.len as usize;
        let map = &mut state.active.map;
        map[at + FRAME_HEADER..at + FRAME_HEADER + len].copy_from_slice(payload);
        map[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        // The length goes last: a frame is complete once it is non-zero.
        compiler_fence(Ordering::Release);
        map[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
        state.active.len += frame;
        let (seq, used) = (state.active.seq, state.active.len);
        if let Some(live) = state.live.get_mut(&seq) {
            live.used = used;
        }
        Ok(())
    }

    /// Makes the next segment ahead of need, off the request path: allocated, mapped, and
    /// every page faulted in for writing, so appends to it never wait on the file system.
    /// Also unmaps sealed segments. A no-op when a spare is ready or the bound leaves no room.
    pub fn prepare_spare(&self) -> io::Result<()> {
        let size = self.shared.options.segment_bytes;
        let (seq, retired) = {
            let mut state = lock(&self.shared.state);
            let retired = std::mem::take(&mut state.retired);
            if state.spare.is_some() || state.disk_bytes + size > self.shared.options.max_bytes {
                return Ok(());
            }
            state.disk_bytes += size;
            let seq = state.next_seq;
            state.next_seq += 1;
            (seq, retired)
        };
        drop(retired);
        let path = self.shared.segment_path(seq);
        let made = self.shared.allocate(&path).and_then(|file| {
            let mut spare = Shared::activate(seq, &file)?;
            // Touch every page (writing the zero already there): the write faults happen here.
            let len = spare.map.len();
            for at in (SEGMENT_HEADER as usize..len).step_by(4096) {
                spare.map[at] = 0;
            }
            Ok(spare)
        });
        let mut state = lock(&self.shared.state);
        match made {
            Ok(spare) => {
                state.spare = Some(spare);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                state.disk_bytes -= size;
                Err(e)
            }
        }
    }

    /// Whether `prepare_spare` has something to do: the active segment half full, no spare
    /// yet, and room for one. (An idle journal so takes one segment, not two; half a
    /// segment of appends is the time a spare has to be made.)
    pub fn wants_spare(&self) -> bool {
        let state = lock(&self.shared.state);
        state.spare.is_none()
            && state.active.len >= state.active.map.len() as u64 / 2
            && state.disk_bytes + self.shared.options.segment_bytes <= self.shared.options.max_bytes
    }

    /// Whether a spare segment is ready.
    pub fn has_spare(&self) -> bool {
        lock(&self.shared.state).spare.is_some()
    }

    /// Bytes of records not yet committed (frame headers included).
    pub fn backlog_bytes(&self) -> u64 {
        let state = lock(&self.shared.state);
        let from = state.committed;
        state
            .live
            .range(from.segment..)
            .map(|(&seq, live)| {
                if seq == from.segment {
                    live.used.saturating_sub(from.offset)
                } else {
                    live.used - SEGMENT_HEADER.min(live.used)
                }
            })
            .sum()
    }

    /// Bytes the segment files take on disk.
    pub fn disk_bytes(&self) -> u64 {
        lock(&self.shared.state).disk_bytes
    }

    /// The directory the journal lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

fn read_commit(path: &Path) -> io::Result<Position> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() >= 16 => {
            let word = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&bytes[i..i + 8]);
                u64::from_le_bytes(b)
            };
            Ok(Position { segment: word(0), offset: word(8) })
        }
        Ok(_) => Ok(Position::default()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Position::default()),
        Err(e) => Err(e),
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Where the payload lies in [`Batch::data`].
    pub range: std::ops::Range<usize>,
    /// Whether an earlier run wrote it.
    pub recovered: bool,
}

/// Records read in one go, and where the reader stands after them.
#[derive(Debug, Default)]
pub struct Batch {
    pub data: Vec<u8>,
    pub frames: Vec<Frame>,
    /// Commit this once the records are safe elsewhere.
    pub end: Position,
    /// Frames skipped as unreadable (a torn or corrupt tail of a segment).
    pub corrupt: usize,
}

impl Batch {
    pub fn payload(&self, frame: &Frame) -> &[u8] {
        &self.data[frame.range.clone()]
    }
}

/// The one consumer: reads records in order and commits how far they are safe.
pub struct Reader {
    shared: Arc<Shared>,
    at: Position,
    file: Option<(u64, File)>,
    buf: Vec<u8>,
}

impl Reader {
    /// Reads up to `max` records after the last read.
    pub fn read(&mut self, max: usize) -> io::Result<Batch> {
        let mut batch = Batch::default();
        while batch.frames.len() < max {
            let (active_seq, limit, next_live, recovered) = {
                let state = lock(&self.shared.state);
                let limit = if self.at.segment == state.active.seq {
                    Some(state.active.len)
                } else {
                    state.live.get(&self.at.segment).map(|l| l.used)
                };
                let next = state.live.range(self.at.segment + 1..).next().map(|(&seq, _)| seq);
                (state.active.seq, limit, next, self.at.segment < state.first_seq_this_run)
            };
            let sealed = self.at.segment != active_seq;
            let limit = match limit {
                Some(limit) if self.at.offset < limit => limit,
                _ if sealed => {
                    // This segment is done (or gone): on to the next one.
                    let Some(next) = next_live else { break };
                    self.at = Position { segment: next, offset: SEGMENT_HEADER };
                    continue;
                }
                _ => break,
            };
            let (advanced, end_of_segment) = self.read_chunk(limit, sealed, recovered, max, &mut batch)?;
            if end_of_segment {
                match next_live {
                    Some(next) => self.at = Position { segment: next, offset: SEGMENT_HEADER },
                    None => {
                        self.at.offset = limit;
                        break;
                    }
                }
            } else if !advanced {
                break;
            }
        }
        batch.end = self.at;
        Ok(batch)
    }

    /// Parses frames from one read of the current segment. Returns whether the position
    /// moved and whether the segment has nothing more to give.
    fn read_chunk(
        &mut self,
        limit: u64,
        sealed: bool,
        recovered: bool,
        max: usize,
        batch: &mut Batch,
    ) -> io::Result<(bool, bool)> {
        let seq = self.at.segment;
        if self.file.as_ref().is_none_or(|(s, _)| *s != seq) {
            match File::open(self.shared.segment_path(seq)) {
                Ok(f) => self.file = Some((seq, f)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((false, true)),
                Err(e) => return Err(e),
            }
        }
        let Some((_, file)) = &self.file else { return Ok((false, true)) };
        let remaining = limit - self.at.offset;
        let mut want = remaining.min(READ_CHUNK) as usize;
        if remaining >= FRAME_HEADER as u64 {
            // A frame larger than a chunk is read whole.
            let mut header = [0u8; 4];
            file.read_exact_at(&mut header, self.at.offset)?;
            let first = FRAME_HEADER + u32::from_le_bytes(header) as usize;
            if first <= FRAME_HEADER + MAX_PAYLOAD && first as u64 <= remaining {
                want = want.max(first);
            }
        }
        self.buf.resize(want, 0);
        let mut got = 0;
        while got < want {
            match file.read_at(&mut self.buf[got..], self.at.offset + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        let buf = &self.buf[..got];
        let mut pos = 0usize;
        let mut end_of_segment = false;
        while batch.frames.len() < max {
            if pos + FRAME_HEADER > buf.len() {
                end_of_segment = sealed && self.at.offset + (pos + FRAME_HEADER) as u64 > limit;
                break;
            }
            let len = u32::from_le_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
            let crc = u32::from_le_bytes([buf[pos + 4], buf[pos + 5], buf[pos + 6], buf[pos + 7]]);
            if len == 0 {
                // Never-written space: the end of a sealed segment.
                end_of_segment = true;
                break;
            }
            let frame_end = pos + FRAME_HEADER + len;
            if frame_end > buf.len() {
                if len > MAX_PAYLOAD || self.at.offset + frame_end as u64 > limit {
                    // Runs past the segment: a torn or corrupt frame ends it.
                    batch.corrupt += 1;
                    end_of_segment = true;
                } else if pos == 0 {
                    // A whole frame should fit one read; it does not: the data is bad.
                    batch.corrupt += 1;
                    end_of_segment = true;
                }
                break;
            }
            let payload = &buf[pos + FRAME_HEADER..frame_end];
            if checksum(payload) != crc {
                batch.corrupt += 1;
                end_of_segment = true;
                break;
            }
            let start = batch.data.len();
            batch.data.extend_from_slice(payload);
            batch.frames.push(Frame { range: start..batch.data.len(), recovered });
            pos = frame_end;
        }
        self.at.offset += pos as u64;
        Ok((pos > 0, end_of_segment && sealed))
    }

    /// Records that everything before `upto` is safe elsewhere: the commit point moves
    /// there and segments wholly before it are deleted.
    pub fn commit(&self, upto: Position) -> io::Result<()> {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&upto.segment.to_le_bytes());
        bytes[8..].copy_from_slice(&upto.offset.to_le_bytes());
        let file = OpenOptions::new().write(true).create(true).truncate(false).open(self.shared.commit_path())?;
        file.write_all_at(&bytes, 0)?;
        let mut state = lock(&self.shared.state);
        if upto > state.committed {
            state.committed = upto;
        }
        let done: Vec<u64> =
            state.live.range(..upto.segment).map(|(&seq, _)| seq).filter(|&seq| seq != state.active.seq).collect();
        for seq in done {
            match std::fs::remove_file(self.shared.segment_path(seq)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            if let Some(live) = state.live.remove(&seq) {
                state.disk_bytes = state.disk_bytes.saturating_sub(live.size);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options { segment_bytes: 4096, max_bytes: 64 * 4096 }
    }

    fn record(i: usize) -> Vec<u8> {
        format!("record-{i:05}-{}", "x".repeat(i % 50)).into_bytes()
    }

    fn read_all(reader: &mut Reader) -> (Vec<Vec<u8>>, Batch) {
        let batch = reader.read(usize::MAX).unwrap();
        let payloads = batch.frames.iter().map(|f| batch.payload(f).to_vec()).collect();
        (payloads, batch)
    }

    fn segment_files(dir: &Path) -> Vec<(String, u64)> {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .map(|e| (e.file_name().into_string().unwrap(), e.metadata().unwrap().len()))
            .collect();
        files.sort();
        files
    }

    /// Copies the journal's files as they are now: what a `kill -9` would leave.
    fn crash_image(from: &Path) -> tempfile::TempDir {
        let to = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
        }
        to
    }

    #[test]
    fn a_clean_close_leaves_only_records_to_replay() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (journal, _reader, _) = Journal::open(dir.path(), "w1", options()).unwrap();
            journal.prepare_spare().unwrap();
            assert_eq!(segment_files(dir.path()).len(), 2, "the active segment and a spare");
        }
        assert_eq!(segment_files(dir.path()), vec![], "nothing written: nothing left");
        {
            let (journal, mut reader, recovered) = Journal::open(dir.path(), "w1", options()).unwrap();
            assert_eq!((recovered.segments, recovered.bytes), (0, 0));
            for i in 0..150 {
                journal.append(&record(i)).unwrap();
            }
            let done = reader.read(usize::MAX).unwrap();
            reader.commit(done.end).unwrap();
        }
        assert_eq!(segment_files(dir.path()), vec![], "all committed: nothing left");
        {
            let (journal, mut reader, _) = Journal::open(dir.path(), "w1", options()).unwrap();
            for i in 0..150 {
                journal.append(&record(i)).unwrap();
            }
            let done = reader.read(100).unwrap();
            reader.commit(done.end).unwrap();
        }
        let left = segment_files(dir.path());
        assert!(!left.is_empty() && left.iter().all(|(_, size)| *size < 4096), "cut to their records: {left:?}");
        let (_journal, mut reader, recovered) = Journal::open(dir.path(), "w1", options()).unwrap();
        let (payloads, batch) = read_all(&mut reader);
        assert_eq!(payloads, (100..150).map(record).collect::<Vec<_>>());
        assert_eq!(batch.corrupt, 0);
        let frames: u64 = payloads.iter().map(|p| (FRAME_HEADER + p.len()) as u64).sum();
        assert_eq!(recovered.bytes, frames, "the records' bytes, not the files'");
    }

    #[test]
    fn segments_a_crash_left_with_nothing_to_replay_are_deleted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, mut reader, _) = Journal::open(dir.path(), "w1", options()).unwrap();
        journal.prepare_spare().unwrap();
        let image = crash_image(dir.path());
        assert_eq!(segment_files(image.path()).len(), 2);
        let (reopened, _reader, recovered) = Journal::open(image.path(), "w1", options()).unwrap();
        assert_eq!((recovered.segments, recovered.bytes), (0, 0), "a failed start leaves no records");
        assert_eq!(reopened.backlog_bytes(), 0);
        assert_eq!(segment_files(image.path()).len(), 1, "only this run's active segment");

        // A crash with 10 records in, 4 of them committed: 6 to replay, counted exactly.
        for i in 0..10 {
            journal.append(&record(i)).unwrap();
        }
        let first4 = reader.read(4).unwrap();
        reader.commit(first4.end).unwrap();
        let image = crash_image(dir.path());
        let (reopened, mut reader, recovered) = Journal::open(image.path(), "w1", options()).unwrap();
        let rest: Vec<Vec<u8>> = (4..10).map(record).collect();
        let frames: u64 = rest.iter().map(|p| (FRAME_HEADER + p.len()) as u64).sum();
        assert_eq!((recovered.segments, recovered.bytes), (1, frames));
        assert_eq!(reopened.backlog_bytes(), frames, "log_spool_bytes reports the records, not the file");
        assert_eq!(read_all(&mut reader).0, rest);
    }

    #[test]
    fn a_spare_is_wanted_once_the_active_segment_is_half_full() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _reader, _) = Journal::open(dir.path(), "w1", options()).unwrap();
        assert!(!journal.wants_spare(), "an idle journal takes one segment");
        let mut i = 0;
        while !journal.wants_spare() {
            journal.append(&record(i)).unwrap();
            i += 1;
        }
        assert!(i > 10, "wanted after {i} records");
        journal.prepare_spare().unwrap();
        assert!(!journal.wants_spare());
    }

    #[test]
    fn records_come_back_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, mut reader, recovered) = Journal::open(dir.path(), "w1", options()).unwrap();
        assert_eq!(recovered.segments, 0);
        let written: Vec<Vec<u8>> = (0..500).map(record).collect();
        for r in &written[..200] {
            journal.append(r).unwrap();
        }
        let first = reader.read(150).unwrap();
        assert_eq!(first.frames.len(), 150);
        for r in &written[200..] {
            journal.append(r).unwrap();
        }
        let (rest, batch) = read_all(&mut reader);
        let mut all: Vec<Vec<u8>> = first.frames.iter().map(|f| first.payload(f).to_vec()).collect();
        all.extend(rest);
        assert_eq!(all, written);
        assert_eq!(batch.corrupt, 0);
        assert!(!batch.frames.iter().any(|f| f.recovered));
        assert!(reader.read(10).unwrap().frames.is_empty(), "nothing more to read");
        let segments = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg"))
            .count();
        assert!(segments > 3, "500 records of ~40 bytes span several 4 KiB segments ({segments})");
    }

    #[test]
    fn commit_deletes_finished_segments_and_a_reopen_replays_only_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (journal, mut reader, _) = Journal::open(dir.path(), "w1", options()).unwrap();
            for i in 0..300 {
                journal.append(&record(i)).unwrap();
            }
            let done = reader.read(200).unwrap();
            let before = journal.disk_bytes();
            reader.commit(done.end).unwrap();
            assert!(journal.disk_bytes() < before, "segments wholly committed are deleted");
            assert!(journal.backlog_bytes() > 0);
            // The process dies here: no shutdown, nothing flushed.
        }
        let (journal, mut reader, recovered) = Journal::open(dir.path(), "w1", options()).unwrap();
        assert!(recovered.segments >= 1);
        journal.append(b"after restart").unwrap();
        let (payloads, batch) = read_all(&mut reader);
        let mut expected: Vec<Vec<u8>> = (200..300).map(record).collect();
        expected.push(b"after restart".to_vec());
        assert_eq!(payloads, expected);
        assert!(batch.frames[..100].iter().all(|f| f.recovered));
        assert!(!batch.frames[100].recovered);
        reader.commit(batch.end).unwrap();
        assert_eq!(journal.backlog_bytes(), 0);
        drop((journal, reader));
        let (_journal, mut reader, _) = Journal::open(dir.path(), "w1", options()).unwrap();
        assert!(reader.read(10).unwrap().frames.is_empty(), "everything was committed");
    }

    #[test]
    fn a_torn_or_corrupt_frame_ends_its_segment_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (journal, _reader, _) = Journal::open(dir.path(), "w1", options()).unwrap();
            for i in 0..3 {
                journal.append(&record(i)).unwrap();
            }
        }
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .unwrap();
        // Flip a byte in the third record's payload: a page a machine crash left half written.
        let bytes = std::fs::read(&seg).unwrap();
        let third = SEGMENT_HEADER as usize + 2 * FRAME_HEADER + record(0).len() + record(1).len() + FRAME_HEADER;
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        file.write_all_at(&[bytes[third] ^ 0xff], third as u64).unwrap();
        let (_journal, mut reader, _) = Journal::open(dir.path(), "w1", options()).unwrap();
        let (payloads, batch) = read_all(&mut reader);
        assert_eq!(payloads, vec![record(0), record(1)]);
        assert_eq!(batch.corrupt, 1);
    }

    #[test]
    fn the_bound_refuses_appends_and_frees_up_after_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, mut reader, _) =
            Journal::open(dir.path(), "w1", Options { segment_bytes: 4096, max_bytes: 3 * 4096 }).unwrap();
        let mut stored = 0;
        let mut refused = 0;
        for i in 0..1000 {
            match journal.append(&record(i)) {
                Ok(()) => stored += 1,
                Err(AppendError::Full) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused > 0 && stored > 100, "stored {stored}, refused {refused}");
        assert!(journal.disk_bytes() <= 3 * 4096);
        let (payloads, batch) = read_all(&mut reader);
        assert_eq!(payloads.len(), stored);
        reader.commit(batch.end).unwrap();
        journal.append(b"room again").unwrap();
        assert_eq!(read_all(&mut reader).0, vec![b"room again".to_vec()]);
    }

    #[test]
    fn a_spare_segment_is_used_for_the_next_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, mut reader, _) = Journal::open(dir.path(), "w1", options()).unwrap();
        journal.prepare_spare().unwrap();
        assert!(journal.has_spare());
        for i in 0..200 {
            journal.append(&record(i)).unwrap();
        }
        assert!(!journal.has_spare(), "rotation took the spare");
        assert_eq!(read_all(&mut reader).0.len(), 200);
    }

    #[test]
    fn a_second_process_cannot_open_the_same_journal() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Journal::open(dir.path(), "w1", options()).unwrap();
        let Err(e) = Journal::open(dir.path(), "w1", options()) else { panic!("opened twice") };
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(Journal::open(dir.path(), "w2", options()).is_ok(), "another name is another journal");
    }

    #[test]
    fn a_frame_larger_than_one_read_comes_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, mut reader, _) =
            Journal::open(dir.path(), "w1", Options { segment_bytes: 2 << 20, max_bytes: 8 << 20 }).unwrap();
        let big = vec![7u8; 600 << 10];
        journal.append(b"before").unwrap();
        journal.append(&big).unwrap();
        journal.append(b"after").unwrap();
        let (payloads, batch) = read_all(&mut reader);
        assert_eq!(payloads, vec![b"before".to_vec(), big, b"after".to_vec()]);
        assert_eq!(batch.corrupt, 0);
    }

    #[test]
    fn bad_sizes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _reader, _) = Journal::open(dir.path(), "w1", options()).unwrap();
        assert!(matches!(journal.append(b""), Err(AppendError::BadSize(0))));
        assert!(matches!(journal.append(&[1u8; 5000]), Err(AppendError::BadSize(5000))));
    }
}
