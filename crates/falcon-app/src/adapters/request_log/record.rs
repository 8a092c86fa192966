//! The request-log row, defined once.
//!
//! One table (`log_record!` below) names each column with its Rust type, how it is stored and
//! the journal version that added it. The struct, `COLUMNS` (the order every sink writes: the
//! COPY text, the INSERT fallback, the SQLite statement), `LogRecord::values`, an empty record
//! and the journal decoder all come from it; the spool (serde) follows the struct field for
//! field.

use chrono::{DateTime, Utc};

/// One column's value, typed as the column is. `None` is SQL NULL.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Text(Option<&'a str>),
    Int(Option<i32>),
    Float(Option<f64>),
    Bool(bool),
    /// JSON text.
    Json(Option<&'a str>),
    Time(DateTime<Utc>),
}

/// How a column is stored: as its Rust type says, or as JSON text.
#[derive(Clone, Copy)]
enum Stored {
    AsTyped,
    Json,
}

/// A column's Rust type: how a row borrows it (`Ref`), its `Value`, its value in an empty
/// record, and how the journal reads it back (`name` says which column a required value is
/// missing from).
trait Column: Sized {
    type Ref<'a>: Copy;
    fn borrow(&self) -> Self::Ref<'_>;
    fn own(r: Self::Ref<'_>) -> Self;
    fn value<'a>(r: Self::Ref<'a>, stored: Stored) -> Value<'a>;
    /// The column's value in an empty record (NULL, false, 0, "", the time now), and in a
    /// journal record of a version before the column.
    fn absent<'a>() -> Self::Ref<'a>;
    fn decode<'a>(d: &mut Decoder<'a>, name: &'static str) -> Result<Self::Ref<'a>, DecodeError>;
}

/// A column whose borrowed form is the value itself.
macro_rules! copied_column {
    () => {
        type Ref<'a> = Self;
        fn borrow(&self) -> Self {
            *self
        }
        fn own(r: Self) -> Self {
            r
        }
    };
}

impl Column for String {
    type Ref<'a> = &'a str;
    fn borrow(&self) -> &str {
        self
    }
    fn own(r: &str) -> Self {
        r.to_owned()
    }
    fn value<'a>(r: Self::Ref<'a>, _: Stored) -> Value<'a> {
        Value::Text(Some(r))
    }
    fn absent<'a>() -> Self::Ref<'a> {
        ""
    }
    fn decode<'a>(d: &mut Decoder<'a>, name: &'static str) -> Result<Self::Ref<'a>, DecodeError> {
        d.text()?.ok_or(DecodeError(name))
    }
}

impl Column for Option<String> {
    type Ref<'a> = Option<&'a str>;
    fn borrow(&self) -> Option<&str> {
        self.as_deref()
    }
    fn own(r: Option<&str>) -> Self {
        r.map(str::to_owned)
    }
    fn value<'a>(r: Self::Ref<'a>, stored: Stored) -> Value<'a> {
        match stored {
            Stored::AsTyped => Value::Text(r),
            Stored::Json => Value::Json(r),
        }
    }
    fn absent<'a>() -> Self::Ref<'a> {
        None
    }
    fn decode<'a>(d: &mut Decoder<'a>, _: &'static str) -> Result<Self::Ref<'a>, DecodeError> {
        d.text()
    }
}

impl Column for Option<i32> {
    copied_column!();
    fn value<'a>(r: Self, _: Stored) -> Value<'a> {
        Value::Int(r)
    }
    fn absent<'a>() -> Self::Ref<'a> {
        None
    }
    fn decode<'a>(d: &mut Decoder<'a>, _: &'static str) -> Result<Self::Ref<'a>, DecodeError> {
        Ok(d.fixed::<4>()?.map(i32::from_le_bytes))
    }
}

impl Column for Option<f64> {
    copied_column!();
    fn value<'a>(r: Self, _: Stored) -> Value<'a> {
        Value::Float(r)
    }
    fn absent<'a>() -> Self::Ref<'a> {
        None
    }
    fn decode<'a>(d: &mut Decoder<'a>, _: &'static str) -> Result<Self::Ref<'a>, DecodeError> {
        Ok(d.fixed::<8>()?.map(f64::from_le_bytes))
    }
}

impl Column for f64 {
    copied_column!();
    fn value<'a>(r: Self, _: Stored) -> Value<'a> {
        Value::Float(Some(r))
    }
    fn absent<'a>() -> Self::Ref<'a> {
        0.0
    }
    fn decode<'a>(d: &mut Decoder<'a>, name: &'static str) -> Result<Self::Ref<'a>, DecodeError> {
        d.fixed::<8>()?.map(f64::from_le_bytes).ok_or(DecodeError(name))
    }
}

impl Column for bool {
    copied_column!();
    fn value<'a>(r: Self, _: Stored) -> Value<'a> {
        Value::Bool(r)
    }
    fn absent<'a>() -> Self::Ref<'a> {
        false
    }
    fn decode<'a>(d: &mut Decoder<'a>, _: &'static str) -> Result<Self::Ref<'a>, DecodeError> {
        d.flag()
    }
}

impl Column for DateTime<Utc> {
    copied_column!();
    fn value<'a>(r: Self, _: Stored) -> Value<'a> {
        Value::Time(r)
    }
    fn absent<'a>() -> Self::Ref<'a> {
        Utc::now()
    }
    fn decode<'a>(d: &mut Decoder<'a>, _: &'static str) -> Result<Self::Ref<'a>, DecodeError> {
        let secs = i64::from_le_bytes(d.array::<8>()?);
        let nanos = u32::from_le_bytes(d.array::<4>()?);
        DateTime::from_timestamp(secs, nanos).ok_or(DecodeError("bad time"))
    }
}

/// The row's table: `field: Type as Stored, since journal version;` in column order.
macro_rules! log_record {
    ($($(#[$meta:meta])* $field:ident: $ty:ty as $stored:ident, since $since:literal;)*) => {
        /// One row of `inference_logs`. The raw text is never stored, only its hash and length.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct LogRecord {
            $($(#[$meta])* pub $field: $ty,)*
        }

        /// How many columns a sink writes.
        pub const COLUMN_COUNT: usize = [$(stringify!($field)),*].len();

        /// The columns a sink writes, in the order of `LogRecord::values` (the table's `id`
        /// is the database's own).
        pub const COLUMNS: [&str; COLUMN_COUNT] = [$(stringify!($field)),*];

        /// One row of `inference_logs`, borrowed: what the request path encodes into the
        /// journal without building a `LogRecord` (issue 34), and what a record lends the
        /// sinks.
        // Each field's type is its column's `Column::Ref`: `&str` for text, the value itself
        // for the rest; the trait stays private, the types it names do not.
        #[allow(private_interfaces)]
        #[derive(Debug, Clone, Copy)]
        pub struct LogRow<'a> {
            $(pub $field: <$ty as Column>::Ref<'a>,)*
        }

        impl<'a> LogRow<'a> {
            /// Every column's value, in `COLUMNS` order, as stored.
            pub fn values(&self) -> [Value<'a>; COLUMN_COUNT] {
                [$(<$ty as Column>::value(self.$field, Stored::$stored)),*]
            }

            /// The row as an owned record.
            pub fn to_record(&self) -> LogRecord {
                LogRecord { $($field: <$ty as Column>::own(self.$field),)* }
            }
        }

        impl LogRecord {
            /// The record, borrowed field for field.
            fn borrowed(&self) -> LogRow<'_> {
                LogRow { $($field: Column::borrow(&self.$field),)* }
            }

            /// A record with every column empty (NULL, false, 0) and the time now.
            fn empty() -> Self {
                LogRow { $($field: <$ty as Column>::absent(),)* }.to_record()
            }
        }

        impl<'a> LogRow<'a> {
            /// The columns of a journal record of `version`, borrowed from it: a column added
            /// after that version is empty.
            fn decode_columns(d: &mut Decoder<'a>, version: u8) -> Result<Self, DecodeError> {
                Ok(Self {
                    $($field: if version >= $since {
                        <$ty as Column>::decode(d, concat!("no ", stringify!($field)))?
                    } else {
                        <$ty as Column>::absent()
                    },)*
                })
            }
        }
    };
}

log_record! {
    /// This record's own id: the same record written twice is one row, two requests that
    /// share a `request_id` are two. (Spooled by older builds without it: see `log_id()`.)
    #[serde(default)]
    log_id: String as AsTyped, since 1;
    request_id: String as AsTyped, since 1;
    worker_id: String as AsTyped, since 1;
    text_hash: Option<String> as AsTyped, since 1;
    text_length: Option<i32> as AsTyped, since 1;
    prediction: Option<String> as AsTyped, since 1;
    confidence: Option<f64> as AsTyped, since 1;
    /// JSON text (an object of label to probability), made once on the request path and
    /// passed through as is: the sinks store it, nothing parses it.
    #[serde(with = "json_text")]
    probabilities: Option<String> as Json, since 1;
    cache_hit: bool as AsTyped, since 1;
    idempotency_hit: bool as AsTyped, since 1;
    success: bool as AsTyped, since 1;
    processing_time_ms: f64 as AsTyped, since 1;
    inference_time_ms: Option<f64> as AsTyped, since 1;
    error_type: Option<String> as AsTyped, since 1;
    error_message: Option<String> as AsTyped, since 1;
    idempotency_key: Option<String> as AsTyped, since 1;
    client_ip: Option<String> as AsTyped, since 1;
    model_version: String as AsTyped, since 1;
    created_at: DateTime<Utc> as AsTyped, since 1;
    /// The API key the request was made with (its id, never the key). Absent in records
    /// spooled by older builds.
    #[serde(default)]
    api_key_id: Option<String> as AsTyped, since 2;
    /// The model the request named, by its name in the repository (the default when it named
    /// none); NULL when it failed before its model was known, and in rows written before
    /// model repositories (those were all the one model's).
    #[serde(default)]
    model_name: Option<String> as AsTyped, since 3;
}

impl LogRecord {
    /// A record of a request that has not succeeded (yet): a fresh `log_id`, the time now,
    /// every optional column empty. Callers fill in what they know.
    pub fn new(request_id: impl Into<String>, worker_id: impl Into<String>, model_version: impl Into<String>) -> Self {
        Self {
            log_id: Self::new_log_id(),
            request_id: request_id.into(),
            worker_id: worker_id.into(),
            model_version: model_version.into(),
            ..Self::empty()
        }
    }

    /// A fresh record id: a UUID v7 (time-ordered, so the unique index takes it at its
    /// right edge).
    pub fn new_log_id() -> String {
        LogId::new().as_str().to_owned()
    }

    /// The record's id; a record spooled before log ids existed is known by its request id.
    pub fn log_id(&self) -> &str {
        self.row().log_id
    }

    /// The record as a row (`LogRow::known_by_id`).
    pub fn row(&self) -> LogRow<'_> {
        self.borrowed().known_by_id()
    }

    /// The record's values, in `COLUMNS` order.
    pub fn values(&self) -> [Value<'_>; COLUMN_COUNT] {
        self.row().values()
    }
}

/// A record as the journal encodes it (version, flags, columns), known to decode: what the
/// writer batches, keeps in memory and hands to the sinks, which read it borrowed. A journal
/// frame is copied once, not decoded into a `String` a text column (issue 34).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded(Box<[u8]>);

impl Encoded {
    /// `bytes` as a record, with its flags; an error when they do not decode.
    pub fn new(bytes: &[u8]) -> Result<(Self, u8), DecodeError> {
        let (_, flags) = LogRow::decode(bytes)?;
        Ok((Self(bytes.into()), flags))
    }

    /// `row`, encoded without flags.
    pub fn of(row: &LogRow<'_>) -> Self {
        let mut bytes = Vec::new();
        row.encode(0, &mut bytes);
        Self(bytes.into_boxed_slice())
    }

    /// The encoding with `flags` in place of its own, into `out` (cleared first).
    pub fn with_flags(&self, flags: u8, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.0);
        if let Some(own) = out.get_mut(1) {
            *own = flags;
        }
    }
}

/// A record a sink writes: owned, or encoded.
pub trait AsRow {
    /// The record as a row; an error only for bytes that do not decode.
    fn as_row(&self) -> Result<LogRow<'_>, DecodeError>;
}

impl AsRow for LogRecord {
    fn as_row(&self) -> Result<LogRow<'_>, DecodeError> {
        Ok(self.row())
    }
}

impl AsRow for Encoded {
    fn as_row(&self) -> Result<LogRow<'_>, DecodeError> {
        LogRow::decode(&self.0).map(|(row, _)| row.known_by_id())
    }
}

impl LogRow<'_> {
    /// The row under its own id: a record without a log id (spooled by an older build) is
    /// known, and written, by its request id.
    fn known_by_id(self) -> Self {
        if self.log_id.is_empty() { Self { log_id: self.request_id, ..self } } else { self }
    }
}

/// A fresh record id on the stack: a UUID v7 in lowercase hex, without hyphens.
pub struct LogId([u8; uuid::fmt::Simple::LENGTH]);

impl LogId {
    #[allow(clippy::new_without_default)] // each call is a new id, not a default
    pub fn new() -> Self {
        let mut id = [0; uuid::fmt::Simple::LENGTH];
        uuid::Uuid::now_v7().simple().encode_lower(&mut id);
        Self(id)
    }

    pub fn as_str(&self) -> &str {
        // Hex digits are always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// The journal's encoding of a record: a version byte, the caller's flags, then the values in
/// `COLUMNS` order (text and JSON as a `u32` length and UTF-8, NULL as a zero tag). About a
/// tenth of the cost of JSON both ways, and the request path pays the encoding. Version 2
/// added `api_key_id` at the end, version 3 `model_name`; records of an older version (a
/// spool from an older build) decode without the columns added since.
const ENCODING_VERSION: u8 = 3;

/// A journal frame that does not decode as a record.
#[derive(Debug, thiserror::Error)]
#[error("undecodable request-log record: {0}")]
pub struct DecodeError(&'static str);

impl LogRecord {
    /// Appends the record's encoding to `out`.
    pub fn encode(&self, flags: u8, out: &mut Vec<u8>) {
        self.row().encode(flags, out);
    }
}

impl LogRow<'_> {
    /// Appends the row's encoding to `out`.
    pub fn encode(&self, flags: u8, out: &mut Vec<u8>) {
        fn text(out: &mut Vec<u8>, v: &str) {
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        out.push(ENCODING_VERSION);
        out.push(flags);
        for value in self.values() {
            match value {
                Value::Text(None) | Value::Int(None) | Value::Float(None) | Value::Json(None) => out.push(0),
                Value::Text(Some(v)) => {
                    out.push(1);
                    text(out, v);
                }
                Value::Int(Some(v)) => {
                    out.push(1);
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Value::Float(Some(v)) => {
                    out.push(1);
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Value::Bool(v) => out.push(u8::from(v)),
                Value::Json(Some(v)) => {
                    out.push(1);
                    text(out, v);
                }
                Value::Time(v) => {
                    out.extend_from_slice(&v.timestamp().to_le_bytes());
                    out.extend_from_slice(&v.timestamp_subsec_nanos().to_le_bytes());
                }
            }
        }
    }
}

impl LogRecord {
    /// Reads a record written by `encode`; returns it and its flags.
    pub fn decode(bytes: &[u8]) -> Result<(Self, u8), DecodeError> {
        LogRow::decode(bytes).map(|(row, flags)| (row.to_record(), flags))
    }
}

impl<'a> LogRow<'a> {
    /// Reads a record written by `encode`, borrowed from `bytes`; returns it and its flags.
    pub fn decode(bytes: &'a [u8]) -> Result<(Self, u8), DecodeError> {
        let mut d = Decoder(bytes);
        let version = d.take(1)?[0];
        if !(1..=ENCODING_VERSION).contains(&version) {
            return Err(DecodeError("unknown version"));
        }
        let flags = d.take(1)?[0];
        let row = Self::decode_columns(&mut d, version)?;
        if !d.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok((row, flags))
    }
}

struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError("bad tag")),
        }
    }

    fn fixed<const N: usize>(&mut self) -> Result<Option<[u8; N]>, DecodeError> {
        if self.flag()? { self.array::<N>().map(Some) } else { Ok(None) }
    }

    fn text(&mut self) -> Result<Option<&'a str>, DecodeError> {
        let Some(len) = self.fixed::<4>()? else { return Ok(None) };
        let bytes = self.take(u32::from_le_bytes(len) as usize)?;
        std::str::from_utf8(bytes).map(Some).map_err(|_| DecodeError("bad UTF-8"))
    }
}

/// `probabilities` in JSON lines (the dead-letter file, an older build's spool): the JSON
/// object itself, not a string holding it.
mod json_text {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    pub fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(text) => {
                let raw = RawValue::from_string(text.clone()).map_err(serde::ser::Error::custom)?;
                raw.serialize(s)
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let raw: Option<Box<RawValue>> = Option::deserialize(d)?;
        Ok(raw.filter(|r| r.get() != "null").map(|r| r.get().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_spooled_by_a_previous_encoding_still_reads() {
        // Version 2 had no model_name at the end, version 1 no api_key_id before it: the same
        // bytes without their NULL tags.
        let r = LogRecord::new("r", "w", "v");
        let mut bytes = Vec::new();
        r.encode(7, &mut bytes);
        assert_eq!(bytes.pop(), Some(0), "model_name NULL is the last byte");
        bytes[0] = 2;
        assert_eq!(LogRecord::decode(&bytes).unwrap(), (r.clone(), 7));
        assert_eq!(bytes.pop(), Some(0), "then api_key_id NULL");
        bytes[0] = 1;
        assert_eq!(LogRecord::decode(&bytes).unwrap(), (r.clone(), 7));
        let named = LogRecord { api_key_id: Some("billing".into()), model_name: Some("topics".into()), ..r };
        let mut bytes = Vec::new();
        named.encode(0, &mut bytes);
        assert_eq!(LogRecord::decode(&bytes).unwrap().0, named);
        bytes[0] = 4;
        assert!(LogRecord::decode(&bytes).is_err(), "an unknown version is refused");
        bytes[0] = 0;
        assert!(LogRecord::decode(&bytes).is_err(), "an unknown version is refused");
    }

    #[test]
    fn the_table_names_twenty_one_columns_log_id_first() {
        assert_eq!(COLUMNS.len(), 21);
        assert_eq!(COLUMNS[0], "log_id", "values() writes the log id fallback into the first column");
        assert_eq!(COLUMNS[19], "api_key_id", "a column added later goes last (the journal reads older records)");
        assert_eq!(COLUMNS[20], "model_name");
        let r = LogRecord::new("r", "w", "v");
        assert!(matches!(r.values()[7], Value::Json(None)), "probabilities are stored as JSON");
        assert!(matches!(r.values()[11], Value::Float(Some(_))), "processing time is required");
    }

    #[test]
    fn a_journal_record_without_a_required_column_names_it() {
        let mut bytes = vec![ENCODING_VERSION, 0];
        // log_id, request_id present; worker_id NULL.
        for text in ["id", "req"] {
            bytes.push(1);
            bytes.extend_from_slice(&(text.len() as u32).to_le_bytes());
            bytes.extend_from_slice(text.as_bytes());
        }
        bytes.push(0);
        assert_eq!(LogRecord::decode(&bytes).unwrap_err().to_string(), "undecodable request-log record: no worker_id");
    }

    #[test]
    fn columns_are_the_record_fields_in_order() {
        let r = LogRecord::new("r", "w", "v");
        let json = serde_json::to_value(&r).unwrap();
        let fields: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        let mut sorted = COLUMNS.to_vec();
        sorted.sort_unstable();
        assert_eq!(fields, sorted, "serde (the spool) and COLUMNS name the same fields");
        assert_eq!(r.values().len(), COLUMNS.len());
    }

    #[test]
    fn both_migrations_create_every_column() {
        for sql in [
            concat!(
                include_str!("../../../migrations/postgres/0001_inference_logs.sql"),
                include_str!("../../../migrations/postgres/0002_log_id.sql"),
                include_str!("../../../migrations/postgres/0004_api_key_id.sql"),
                include_str!("../../../migrations/postgres/0006_model_name.sql")
            ),
            concat!(
                include_str!("../../../migrations/sqlite/0001_inference_logs.sql"),
                include_str!("../../../migrations/sqlite/0002_log_id.sql"),
                include_str!("../../../migrations/sqlite/0004_api_key_id.sql"),
                include_str!("../../../migrations/sqlite/0006_model_name.sql")
            ),
        ] {
            for c in COLUMNS {
                let created = sql.lines().any(|l| l.trim_start().starts_with(&format!("{c} ")));
                let added = sql.contains(&format!("ADD COLUMN {c} "))
                    || sql.contains(&format!("ADD COLUMN IF NOT EXISTS {c} "));
                assert!(created || added, "{c}");
            }
        }
    }

    #[test]
    fn the_journal_encoding_round_trips_every_field() {
        let full = LogRecord {
            text_hash: Some("abc".into()),
            text_length: Some(-3),
            prediction: Some("positive".into()),
            confidence: Some(0.125),
            probabilities: Some(r#"{"negative":0.875,"positive":0.125}"#.into()),
            cache_hit: true,
            idempotency_hit: false,
            success: true,
            processing_time_ms: 1.5,
            inference_time_ms: Some(f64::INFINITY),
            error_type: Some("e".into()),
            error_message: Some("tab\there ✓".into()),
            idempotency_key: Some("k".into()),
            client_ip: Some("::1".into()),
            api_key_id: Some("billing".into()),
            model_name: Some("topics".into()),
            ..LogRecord::new("req", "w", "v")
        };
        let row = full.row();
        assert_eq!(row.to_record(), full, "a row owns back every field");
        let mut from_row = Vec::new();
        row.encode(1, &mut from_row);
        assert_eq!(LogRecord::decode(&from_row).unwrap(), (full.clone(), 1), "a row encodes as its record");
        for (record, flags) in [(full, 1u8), (LogRecord::new("r", "w", "v"), 0)] {
            let mut bytes = Vec::new();
            record.encode(flags, &mut bytes);
            let (back, back_flags) = LogRecord::decode(&bytes).unwrap();
            assert_eq!(back, record);
            assert_eq!(back_flags, flags);
            assert!(LogRecord::decode(&bytes[..bytes.len() - 1]).is_err(), "truncated");
        }
    }

    #[test]
    fn a_record_spooled_without_a_log_id_is_known_by_its_request_id() {
        let json = r#"{"request_id":"req-9","worker_id":"w","text_hash":null,"text_length":null,"prediction":null,
            "confidence":null,"probabilities":null,"cache_hit":false,"idempotency_hit":false,"success":true,
            "processing_time_ms":1.0,"inference_time_ms":null,"error_type":null,"error_message":null,
            "idempotency_key":null,"client_ip":null,"model_version":"v","created_at":"2026-11-28T12:00:00Z"}"#;
        let r: LogRecord = serde_json::from_str(json).unwrap();
        assert_eq!(r.log_id(), "req-9");
        assert!(matches!(r.values()[0], Value::Text(Some("req-9"))));
        assert_eq!(r.row().log_id, "req-9");
    }

    #[test]
    fn an_encoded_record_reads_back_borrowed_and_is_checked_when_made() {
        let r = LogRecord { probabilities: Some(r#"{"a":1.0}"#.into()), ..LogRecord::new("req", "w", "v") };
        let encoded = Encoded::of(&r.row());
        assert_eq!(encoded.as_row().unwrap().to_record(), r);
        let mut bytes = Vec::new();
        encoded.with_flags(SPOOLED_FOR_TEST, &mut bytes);
        let (again, flags) = Encoded::new(&bytes).unwrap();
        assert_eq!((again.as_row().unwrap().to_record(), flags), (r.clone(), SPOOLED_FOR_TEST));
        assert!(Encoded::new(&bytes[..bytes.len() - 1]).is_err(), "a torn record is refused when made");
        assert!(Encoded::new(&[]).is_err());
        // A record encoded without a log id (an older build's) is written under its request id.
        let (old, _) = Encoded::new(&{
            let mut b = Vec::new();
            LogRow { log_id: "", ..r.row() }.encode(0, &mut b);
            b
        })
        .unwrap();
        assert_eq!(old.as_row().unwrap().log_id, "req");
    }

    const SPOOLED_FOR_TEST: u8 = 1;

    #[test]
    fn log_ids_are_time_ordered_hex() {
        let (a, b) = (LogId::new(), LogId::new());
        for id in [a.as_str(), b.as_str()] {
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{id}");
            assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
        }
        assert!(a.as_str() < b.as_str(), "the unique index takes new ids at its right edge");
    }
}
