//! JSON log lines on stdout: `timestamp`, `level` (`INFO`/`WARN`/`ERROR`), `message`,
//! `worker_id`, `target`, and every event field at the top level (so `request_id` is
//! where `jq 'select(.request_id == "…")'` looks for it).

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats each event as one JSON object.
pub struct JsonLines {
    worker_id: String,
}

impl JsonLines {
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self { worker_id: worker_id.into() }
    }
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The whole cause chain, so the log says why and not only what.
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        self.0.insert(field.name().to_owned(), Value::from(text));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut map = Map::new();
        event.record(&mut Fields(&mut map));
        let meta = event.metadata();
        map.insert(
            "timestamp".into(),
            Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        map.insert("level".into(), Value::from(meta.level().as_str()));
        map.insert("worker_id".into(), Value::from(self.worker_id.as_str()));
        map.insert("target".into(), Value::from(meta.target()));
        let line = serde_json::to_string(&map).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// Our own crates at `level`, everything else at WARN and above. A directive's target
/// matches every target that starts with it, so `falcon` covers the binary and every
/// `falcon_*` crate, a backend added later included, without naming any of them.
fn filter(level: &str) -> EnvFilter {
    let level = match level.to_ascii_lowercase().as_str() {
        "warning" => "warn".to_owned(),
        other => other.to_owned(),
    };
    EnvFilter::new(format!("warn,falcon={level}"))
}

/// Installs the JSON logger for this process. `level` is one of TRACE..ERROR; our own
/// crates log at that level, dependencies at WARN and above. Returns false if a logger
/// was already installed (tests start several workers in one process).
pub fn init(worker_id: &str, level: &str) -> bool {
    tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .event_format(JsonLines::new(worker_id))
        .with_writer(std::io::stdout)
        .try_init()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn every_falcon_crate_logs_at_the_level_and_dependencies_at_warn() {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter("INFO"))
            .event_format(JsonLines::new("w-1"))
            .with_writer(buf.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "falcon_app::pipeline", "server");
            tracing::info!(target: "falcon_some_new_backend", "backend");
            tracing::info!(target: "falcon", "cli");
            tracing::debug!(target: "falcon_app::pipeline", "too detailed");
            tracing::info!(target: "hyper::proto", "dependency chatter");
            tracing::warn!(target: "hyper::proto", "dependency warning");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let messages: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["message"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(messages, ["server", "backend", "cli", "dependency warning"]);
    }

    #[test]
    fn lines_are_json_with_top_level_fields() {
        let buf = Buf::default();
        let subscriber =
            tracing_subscriber::fmt().event_format(JsonLines::new("w-1")).with_writer(buf.clone()).finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(request_id = "abc", status = 504u64, "Inference timeout");
            tracing::warn!(error = &std::io::Error::other("boom") as &dyn std::error::Error, "Redis unavailable");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["level"], "ERROR");
        assert_eq!(lines[0]["message"], "Inference timeout");
        assert_eq!(lines[0]["request_id"], "abc");
        assert_eq!(lines[0]["status"], 504);
        assert_eq!(lines[0]["worker_id"], "w-1");
        assert!(lines[0]["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["error"], "boom");
    }
}
