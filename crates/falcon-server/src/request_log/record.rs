//! The request-log row, defined once.
//!
//! `COLUMNS` names the 18 columns every sink writes, in order, and `LogRecord::values`
//! gives a record's values in that order: the COPY text, the INSERT fallback, the SQLite
//! statement and the spool (serde, field for field) all derive from these two.

use chrono::{DateTime, Utc};

/// One row of `inference_logs`. The raw text is never stored, only its SHA-256 and length.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogRecord {
    /// This record's own id: the same record written twice is one row, two requests that
    /// share a `request_id` are two. (Spooled by older builds without it: see `log_id()`.)
    #[serde(default)]
    pub log_id: String,
    pub request_id: String,
    pub worker_id: String,
    pub text_hash: Option<String>,
    pub text_length: Option<i32>,
    pub prediction: Option<String>,
    pub confidence: Option<f64>,
    /// JSON text (an object of label to probability), made once on the request path and
    /// passed through as is: the sinks store it, nothing parses it.
    #[serde(with = "json_text")]
    pub probabilities: Option<String>,
    pub cache_hit: bool,
    pub idempotency_hit: bool,
    pub success: bool,
    pub processing_time_ms: f64,
    pub inference_time_ms: Option<f64>,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    pub idempotency_key: Option<String>,
    pub client_ip: Option<String>,
    pub model_version: String,
    pub created_at: DateTime<Utc>,
    /// The API key the request was made with (its id, never the key). Absent in records
    /// spooled by older builds.
    #[serde(default)]
    pub api_key_id: Option<String>,
}

/// The columns a sink writes, in the order of `LogRecord::values` (the table's `id` is the
/// database's own).
pub const COLUMNS: [&str; 20] = [
    "log_id",
    "request_id",
    "worker_id",
    "text_hash",
    "text_length",
    "prediction",
    "confidence",
    "probabilities",
    "cache_hit",
    "idempotency_hit",
    "success",
    "processing_time_ms",
    "inference_time_ms",
    "error_type",
    "error_message",
    "idempotency_key",
    "client_ip",
    "model_version",
    "created_at",
    "api_key_id",
];

/// One column's value, typed as the column is. `None` is SQL NULL.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Text(Option<&'a str>),
    Int(Option<i32>),
    Float(Option<f64>),
    Bool(bool),
    /// JSON text.
    Json(Option<&'a str>),
    Time(&'a DateTime<Utc>),
}

impl LogRecord {
    /// A record of a request that has not succeeded (yet): a fresh `log_id`, the time now,
    /// every optional column empty. Callers fill in what they know.
    pub fn new(request_id: impl Into<String>, worker_id: impl Into<String>, model_version: impl Into<String>) -> Self {
        Self {
            log_id: Self::new_log_id(),
            request_id: request_id.into(),
            worker_id: worker_id.into(),
            text_hash: None,
            text_length: None,
            prediction: None,
            confidence: None,
            probabilities: None,
            cache_hit: false,
            idempotency_hit: false,
            success: false,
            processing_time_ms: 0.0,
            inference_time_ms: None,
            error_type: None,
            error_message: None,
            idempotency_key: None,
            client_ip: None,
            model_version: model_version.into(),
            created_at: Utc::now(),
            api_key_id: None,
        }
    }

    /// A fresh record id: a UUID v7 (time-ordered, so the unique index takes it at its
    /// right edge).
    pub fn new_log_id() -> String {
        uuid::Uuid::now_v7().simple().to_string()
    }

    /// The record's id; a record spooled before log ids existed is known by its request id.
    pub fn log_id(&self) -> &str {
        if self.log_id.is_empty() { &self.request_id } else { &self.log_id }
    }

    /// The record's values, in `COLUMNS` order.
    pub fn values(&self) -> [Value<'_>; 20] {
        use Value::{Bool, Float, Int, Json, Text, Time};
        [
            Text(Some(self.log_id())),
            Text(Some(&self.request_id)),
            Text(Some(&self.worker_id)),
            Text(self.text_hash.as_deref()),
            Int(self.text_length),
            Text(self.prediction.as_deref()),
            Float(self.confidence),
            Json(self.probabilities.as_deref()),
            Bool(self.cache_hit),
            Bool(self.idempotency_hit),
            Bool(self.success),
            Float(Some(self.processing_time_ms)),
            Float(self.inference_time_ms),
            Text(self.error_type.as_deref()),
            Text(self.error_message.as_deref()),
            Text(self.idempotency_key.as_deref()),
            Text(self.client_ip.as_deref()),
            Text(Some(&self.model_version)),
            Time(&self.created_at),
            Text(self.api_key_id.as_deref()),
        ]
    }
}

/// The journal's encoding of a record: a version byte, the caller's flags, then the values in
/// `COLUMNS` order (text and JSON as a `u32` length and UTF-8, NULL as a zero tag). About a
/// tenth of the cost of JSON both ways, and the request path pays the encoding. Version 2
/// added `api_key_id` at the end; version 1 records (a spool from an older build) decode
/// without it.
const ENCODING_VERSION: u8 = 2;

/// A journal frame that does not decode as a record.
#[derive(Debug, thiserror::Error)]
#[error("undecodable request-log record: {0}")]
pub struct DecodeError(&'static str);

impl LogRecord {
    /// Appends the record's encoding to `out`.
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

    /// Reads a record written by `encode`; returns it and its flags.
    pub fn decode(bytes: &[u8]) -> Result<(Self, u8), DecodeError> {
        let mut d = Decoder(bytes);
        let version = d.take(1)?[0];
        if version != 1 && version != ENCODING_VERSION {
            return Err(DecodeError("unknown version"));
        }
        let flags = d.take(1)?[0];
        let record = Self {
            log_id: d.text()?.ok_or(DecodeError("no log_id"))?,
            request_id: d.text()?.ok_or(DecodeError("no request_id"))?,
            worker_id: d.text()?.ok_or(DecodeError("no worker_id"))?,
            text_hash: d.text()?,
            text_length: d.fixed::<4>()?.map(i32::from_le_bytes),
            prediction: d.text()?,
            confidence: d.fixed::<8>()?.map(f64::from_le_bytes),
            probabilities: d.text()?,
            cache_hit: d.flag()?,
            idempotency_hit: d.flag()?,
            success: d.flag()?,
            processing_time_ms: d.fixed::<8>()?.map(f64::from_le_bytes).ok_or(DecodeError("no processing time"))?,
            inference_time_ms: d.fixed::<8>()?.map(f64::from_le_bytes),
            error_type: d.text()?,
            error_message: d.text()?,
            idempotency_key: d.text()?,
            client_ip: d.text()?,
            model_version: d.text()?.ok_or(DecodeError("no model_version"))?,
            created_at: {
                let secs = i64::from_le_bytes(d.array::<8>()?);
                let nanos = u32::from_le_bytes(d.array::<4>()?);
                DateTime::from_timestamp(secs, nanos).ok_or(DecodeError("bad time"))?
            },
            api_key_id: if version >= 2 { d.text()? } else { None },
        };
        if !d.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok((record, flags))
    }
}

struct Decoder<'a>(&'a [u8]);

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
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

    fn text(&mut self) -> Result<Option<String>, DecodeError> {
        let Some(len) = self.fixed::<4>()? else { return Ok(None) };
        let bytes = self.take(u32::from_le_bytes(len) as usize)?;
        std::str::from_utf8(bytes).map(|s| Some(s.to_string())).map_err(|_| DecodeError("bad UTF-8"))
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
    fn a_record_spooled_by_the_previous_encoding_still_reads() {
        // Version 1 had no api_key_id at the end: the same bytes without its NULL tag.
        let r = LogRecord::new("r", "w", "v");
        let mut v2 = Vec::new();
        r.encode(7, &mut v2);
        assert_eq!(v2.pop(), Some(0), "api_key_id NULL is the last byte");
        v2[0] = 1;
        let (old, flags) = LogRecord::decode(&v2).unwrap();
        assert_eq!((old, flags), (r.clone(), 7));
        let keyed = LogRecord { api_key_id: Some("billing".into()), ..r };
        let mut bytes = Vec::new();
        keyed.encode(0, &mut bytes);
        assert_eq!(LogRecord::decode(&bytes).unwrap().0, keyed);
        bytes[0] = 3;
        assert!(LogRecord::decode(&bytes).is_err(), "an unknown version is refused");
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
                include_str!("../../migrations/postgres/0001_inference_logs.sql"),
                include_str!("../../migrations/postgres/0002_log_id.sql"),
                include_str!("../../migrations/postgres/0004_api_key_id.sql")
            ),
            concat!(
                include_str!("../../migrations/sqlite/0001_inference_logs.sql"),
                include_str!("../../migrations/sqlite/0002_log_id.sql"),
                include_str!("../../migrations/sqlite/0004_api_key_id.sql")
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
            ..LogRecord::new("req", "w", "v")
        };
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
    }
}
