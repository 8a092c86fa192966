//! A labelled CSV of the user's own: a header row, a text column and a label column (any
//! names), any number of labels (2 or more), which come from the data. Every error names its
//! line (the file's, counting the header as line 1).

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::Dataset;
use crate::error::ModelError;

/// The columns that hold each row's text and label.
#[derive(Debug, Clone, Copy)]
pub struct CsvColumns<'a> {
    pub text: &'a str,
    pub label: &'a str,
}

impl Default for CsvColumns<'_> {
    fn default() -> Self {
        Self { text: "text", label: "label" }
    }
}

/// Reads a labelled CSV. The classes are the distinct labels sorted by name, so their order
/// does not depend on the order of the rows. Refused, with the line: a missing column, a row
/// of another width, a text or label that is empty or not UTF-8, a label with fewer than 2
/// examples (the split keeps some of each class for the test), fewer than 2 labels.
pub fn load_csv(path: &Path, columns: CsvColumns) -> Result<Dataset, ModelError> {
    let bytes = std::fs::read(path).map_err(|error| ModelError::Io { path: path.to_owned(), error })?;
    let bad = |line: u64, message: String| ModelError::Data { path: path.to_owned(), line: line as usize, message };
    let mut reader = ::csv::ReaderBuilder::new().has_headers(true).from_reader(bytes.as_slice());
    let header = reader.byte_headers().map_err(|e| csv_error(path, &e))?.clone();
    let listed = || header.iter().map(|h| format!("{:?}", String::from_utf8_lossy(h))).collect::<Vec<_>>().join(", ");
    let column = |name: &str, flag: &str| {
        header.iter().position(|h| h == name.as_bytes()).ok_or_else(|| {
            bad(1, format!("the header has no column {name:?} (it has {}); {flag} names another", listed()))
        })
    };
    let (text_at, label_at) = (column(columns.text, "--text-column")?, column(columns.label, "--label-column")?);
    let mut texts = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut lines = Vec::new();
    let mut record = ::csv::ByteRecord::new();
    while reader.read_byte_record(&mut record).map_err(|e| csv_error(path, &e))? {
        let line = record.position().map_or(0, ::csv::Position::line);
        let field = |at: usize, what: &str| {
            let raw = record.get(at).unwrap_or_default();
            String::from_utf8(raw.to_vec()).map_err(|_| bad(line, format!("the {what} is not valid UTF-8")))
        };
        let (text, label) = (field(text_at, "text")?, field(label_at, "label")?);
        if text.trim().is_empty() {
            return Err(bad(line, "the text is empty".into()));
        }
        let label = label.trim();
        if label.is_empty() {
            return Err(bad(line, "the label is empty".into()));
        }
        texts.push(text);
        names.push(label.to_owned());
        lines.push(line);
    }
    if texts.is_empty() {
        return Err(ModelError::NoData(format!("{} has a header and no rows", path.display())));
    }
    // Each label's count and the line of its first example.
    let mut seen: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for (name, &line) in names.iter().zip(&lines) {
        seen.entry(name).or_insert((0, line)).0 += 1;
    }
    if let Some((name, (_, line))) = seen.iter().find(|(_, (count, _))| *count < 2) {
        return Err(bad(
            *line,
            format!(
                "the label {name:?} has only this one example; each label needs at least 2 (the split keeps some of each for the test)"
            ),
        ));
    }
    if seen.len() < 2 {
        let only = names.first().map(String::as_str).unwrap_or_default();
        return Err(bad(lines[0], format!("every row has the label {only:?}; a classifier needs 2 or more labels")));
    }
    let label_names: Vec<String> = seen.keys().map(|&name| name.to_owned()).collect();
    let labels = names.iter().map(|name| label_names.binary_search(name).unwrap_or_default()).collect();
    let mut hasher = Sha256::new();
    hasher.update(path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
    hasher.update(&bytes);
    Ok(Dataset { texts, labels, label_names, sha256: hex::encode(hasher.finalize()), files: vec![path.to_owned()] })
}

/// The CSV reader's error, with its line.
fn csv_error(path: &Path, e: &::csv::Error) -> ModelError {
    let line = e.position().map_or(0, ::csv::Position::line) as usize;
    let message = match e.kind() {
        ::csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("this row has {len} fields; the header has {expected_len}")
        }
        ::csv::ErrorKind::Io(error) => format!("cannot read: {error}"),
        _ => format!("not a CSV row: {e}"),
    };
    ModelError::Data { path: path.to_owned(), line, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(content: &[u8]) -> Result<Dataset, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv");
        std::fs::write(&path, content).unwrap();
        load_csv(&path, CsvColumns::default())
            .map_err(|e| e.to_string().replace(&path.display().to_string(), "data.csv"))
    }

    #[test]
    fn labels_come_from_the_data_sorted_and_quoted_fields_are_read_whole() {
        let data = load(b"id,text,label\n1,\"spam, spam\nand eggs\",spam\n2,hello,ham\n3,buy now,spam\n4,hi,ham\n5,x,eggs\n6,y,eggs\n")
            .unwrap();
        assert_eq!(data.label_names, ["eggs", "ham", "spam"]);
        assert_eq!(data.labels, [2, 1, 2, 1, 0, 0]);
        assert_eq!(data.texts[0], "spam, spam\nand eggs");
        assert_eq!(data.class_counts(), [2, 2, 2]);
        assert_eq!(data.sha256.len(), 64);
    }

    #[test]
    fn other_column_names_are_named_by_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        std::fs::write(&path, "body,topic\na,x\nb,x\nc,y\nd,y\n").unwrap();
        let data = load_csv(&path, CsvColumns { text: "body", label: "topic" }).unwrap();
        assert_eq!(data.label_names, ["x", "y"]);
        let missing = load_csv(&path, CsvColumns::default()).unwrap_err().to_string();
        assert!(
            missing.ends_with(
                ":1: the header has no column \"text\" (it has \"body\", \"topic\"); --text-column names another"
            ),
            "{missing}"
        );
    }

    /// Issue 32 §1: bad input gets one clear message with the line number.
    #[test]
    fn bad_input_is_one_message_with_its_line() {
        let cases: [(&[u8], &str); 8] = [
            (b"text\na\nb\n", "data.csv:1: the header has no column \"label\""),
            (b"text,label\na,x\n,y\nc,y\n", "data.csv:3: the text is empty"),
            (b"text,label\na,x\nb, \n", "data.csv:3: the label is empty"),
            (b"text,label\na,x\nb\xff,x\nc,y\nd,y\n", "data.csv:3: the text is not valid UTF-8"),
            (b"text,label\na,x\nb,x\nc,y\n", "data.csv:4: the label \"y\" has only this one example"),
            (
                b"text,label\na,x\nb,x\nc,x\n",
                "data.csv:2: every row has the label \"x\"; a classifier needs 2 or more labels",
            ),
            (b"text,label\na,x,extra\n", "data.csv:2: this row has 3 fields; the header has 2"),
            (b"text,label\n", "no training data: data.csv has a header and no rows"),
        ];
        for (content, expected) in cases {
            let message = load(content).unwrap_err();
            assert!(message.starts_with(expected) || message.contains(expected), "{expected}\n  got: {message}");
        }
    }
}
