//! A JSON-lines file of request-log records: the dead-letter file (rows the database
//! rejected, for a person to look at), and the spool format of older builds, read once at
//! start-up and moved into the journal. A torn or corrupt line is skipped and counted.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::LogRecord;

/// An append-only file of records, bounded in bytes.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    max_bytes: u64,
    bytes: u64,
}

impl Spool {
    /// Opens the file at `path` (creating its folder); what it holds is kept.
    pub fn open_file(path: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        Ok(Self { path, max_bytes, bytes })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends records, synced to disk when `sync`. Returns how many did not fit under
    /// `max_bytes`.
    pub fn append<R: std::borrow::Borrow<LogRecord>>(&mut self, records: &[R], sync: bool) -> std::io::Result<usize> {
        let mut buf = Vec::new();
        let mut rejected = 0;
        for r in records {
            let mut line = serde_json::to_vec(r.borrow()).map_err(std::io::Error::other)?;
            line.push(b'\n');
            if self.bytes + (buf.len() + line.len()) as u64 > self.max_bytes {
                rejected += 1;
                continue;
            }
            buf.extend_from_slice(&line);
        }
        if !buf.is_empty() {
            let mut file = OpenOptions::new().create(true).append(true).open(&self.path)?;
            file.write_all(&buf)?;
            if sync {
                file.sync_data()?;
            }
            self.bytes += buf.len() as u64;
        }
        Ok(rejected)
    }

    /// Reads every readable record; returns them and the number of unreadable lines.
    pub fn read_all(&self) -> std::io::Result<(Vec<LogRecord>, usize)> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(e),
        };
        let mut records = Vec::new();
        let mut corrupt = 0;
        for line in BufReader::new(file).split(b'\n') {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<LogRecord>(&line) {
                Ok(r) => records.push(r),
                Err(_) => corrupt += 1,
            }
        }
        Ok((records, corrupt))
    }

    /// Empties the spool once everything in it is in the database.
    pub fn clear(&mut self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> LogRecord {
        LogRecord {
            text_hash: Some("h".into()),
            text_length: Some(5),
            prediction: Some("positive".into()),
            confidence: Some(0.9),
            probabilities: Some(r#"{"positive":0.9}"#.into()),
            success: true,
            processing_time_ms: 1.5,
            inference_time_ms: Some(0.5),
            client_ip: Some("127.0.0.1".into()),
            ..LogRecord::new(format!("req-{i}"), "w", "v1")
        }
    }

    #[test]
    fn records_survive_a_reopen_and_clear_empties_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open_file(dir.path().join("w1.jsonl"), 1 << 20).unwrap();
        let written = vec![record(1), record(2)];
        assert_eq!(s.append(&written, true).unwrap(), 0);
        let reopened = Spool::open_file(dir.path().join("w1.jsonl"), 1 << 20).unwrap();
        assert!(!reopened.is_empty());
        let (records, corrupt) = reopened.read_all().unwrap();
        assert_eq!(records, written, "every field round-trips exactly");
        assert_eq!(corrupt, 0);
        s.clear().unwrap();
        assert!(s.is_empty());
        assert!(s.read_all().unwrap().0.is_empty());
    }

    #[test]
    fn a_torn_tail_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open_file(dir.path().join("w1.jsonl"), 1 << 20).unwrap();
        s.append(&[record(1), record(2)], false).unwrap();
        let mut f = OpenOptions::new().append(true).open(s.path()).unwrap();
        f.write_all(br#"{"request_id":"req-3","worker"#).unwrap();
        let (records, corrupt) = s.read_all().unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(corrupt, 1);
    }

    #[test]
    fn max_bytes_bounds_the_spool_and_reports_what_did_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let one = serde_json::to_vec(&record(1)).unwrap().len() as u64 + 1;
        let mut s = Spool::open_file(dir.path().join("w1.jsonl"), one * 3).unwrap();
        assert_eq!(s.append(&(0..5).map(record).collect::<Vec<_>>(), true).unwrap(), 2);
        assert_eq!(s.read_all().unwrap().0.len(), 3);
        assert!(s.bytes() <= one * 3);
    }
}
