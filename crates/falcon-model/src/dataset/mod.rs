//! The data a model learns from: the VADER human-rated sentences (Hutto & Gilbert, ICWSM
//! 2014), the default, or a labelled CSV of the user's own (`csv`); and the train/test split.

mod csv;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::ModelError;

/// Class labels, in class-index order.
pub const LABELS: [&str; 3] = ["negative", "neutral", "positive"];

/// Maps a mean human rating (−4..+4) to a class: ≤ −0.5 negative, ≥ +0.5 positive, else neutral.
pub fn label_for_rating(rating: f64) -> usize {
    if rating <= -0.5 {
        0
    } else if rating >= 0.5 {
        2
    } else {
        1
    }
}

pub use self::csv::{CsvColumns, load_csv};

/// Labelled sentences and a fingerprint of the files they came from.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub texts: Vec<String>,
    /// Each text's class: an index into `label_names`.
    pub labels: Vec<usize>,
    /// The classes, in class-index order (VADER's: `LABELS`).
    pub label_names: Vec<String>,
    /// SHA-256 over each source file's name and bytes, in name order.
    pub sha256: String,
    pub files: Vec<PathBuf>,
}

impl Dataset {
    /// Number of sentences per class, in class-index order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.label_names.len()];
        for &k in &self.labels {
            counts[k] += 1;
        }
        counts
    }
}

/// Loads every `*_GroundTruth.txt` in `dir` (tab-separated `id, mean rating, text`, CRLF or
/// LF line ends), in file-name order.
pub fn load_vader_dir(dir: &Path) -> Result<Dataset, ModelError> {
    let io = |error| ModelError::Io { path: dir.to_owned(), error };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with("_GroundTruth.txt")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::NoData(format!("no *_GroundTruth.txt files in {}", dir.display())));
    }
    let mut hasher = Sha256::new();
    let mut texts = Vec::new();
    let mut labels = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).map_err(|error| ModelError::Io { path: path.clone(), error })?;
        hasher.update(path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        hasher.update(&bytes);
        let content = String::from_utf8_lossy(&bytes);
        for (i, line) in content.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let bad = |message: String| ModelError::Data { path: path.clone(), line: i + 1, message };
            let mut parts = line.splitn(3, '\t');
            let (_id, rating, text) = match (parts.next(), parts.next(), parts.next()) {
                (Some(id), Some(r), Some(t)) => (id, r, t),
                _ => {
                    return Err(bad("expected 3 tab-separated fields: id, rating, text".into()));
                }
            };
            let rating: f64 = rating.trim().parse().map_err(|e| bad(format!("bad rating {rating:?}: {e}")))?;
            texts.push(text.to_owned());
            labels.push(label_for_rating(rating));
        }
    }
    let label_names = LABELS.iter().map(|&l| l.to_owned()).collect();
    Ok(Dataset { texts, labels, label_names, sha256: hex::encode(hasher.finalize()), files })
}

/// A small deterministic PRNG (SplitMix64), so the split depends only on the seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Stratified split: within each class, a seeded shuffle puts `round(n_k · test_fraction)`
/// items in the test set. Returns `(train, test)` index lists, each sorted.
pub fn stratified_split(labels: &[usize], test_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let n_classes = labels.iter().max().map_or(0, |m| m + 1);
    let mut rng = SplitMix64(seed);
    let mut train = Vec::new();
    let mut test = Vec::new();
    for k in 0..n_classes {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == k).collect();
        for i in (1..idx.len()).rev() {
            idx.swap(i, rng.below(i + 1));
        }
        let n_test = (idx.len() as f64 * test_fraction).round() as usize;
        test.extend_from_slice(&idx[..n_test]);
        train.extend_from_slice(&idx[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rating_thresholds() {
        assert_eq!(label_for_rating(-0.5), 0);
        assert_eq!(label_for_rating(-0.49), 1);
        assert_eq!(label_for_rating(0.49), 1);
        assert_eq!(label_for_rating(0.5), 2);
        assert_eq!(label_for_rating(-4.0), 0);
    }

    #[test]
    fn split_is_stratified_disjoint_and_seeded() {
        let labels: Vec<usize> = (0..1000).map(|i| if i % 10 < 2 { 1 } else { i % 2 * 2 }).collect();
        let (train, test) = stratified_split(&labels, 0.2, 42);
        assert_eq!(train.len() + test.len(), 1000);
        assert!(test.iter().all(|i| train.binary_search(i).is_err()));
        let share = |k| test.iter().filter(|&&i| labels[i] == k).count();
        assert_eq!(share(1), 40);
        assert_eq!(share(0) + share(2), 160);
        assert_eq!(stratified_split(&labels, 0.2, 42), (train.clone(), test.clone()));
        assert_ne!(stratified_split(&labels, 0.2, 7).1, test);
    }

    #[test]
    fn parses_crlf_files_and_hashes_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a_GroundTruth.txt"), "1\t2.5\tGreat!\r\n2\t-1.0\tBad\tstuff\r\n\r\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let d = load_vader_dir(dir.path()).unwrap();
        assert_eq!(d.texts, ["Great!", "Bad\tstuff"]);
        assert_eq!(d.labels, [2, 0]);
        assert_eq!(d.sha256.len(), 64);
    }

    #[test]
    fn bad_rating_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x_GroundTruth.txt"), "1\t1.0\tok\n2\tabc\tno\n").unwrap();
        let err = load_vader_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("x_GroundTruth.txt:2"), "{err}");
    }

    #[test]
    fn empty_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load_vader_dir(dir.path()), Err(ModelError::NoData(_))));
    }

    #[test]
    fn shipped_vader_data_has_the_published_counts() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/vader");
        let d = load_vader_dir(&dir).unwrap();
        assert_eq!(d.texts.len(), 23_703);
        assert_eq!(d.class_counts(), [9_181, 4_244, 10_278]);
    }
}
