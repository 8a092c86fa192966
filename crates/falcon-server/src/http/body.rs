//! The one body reader of every inference route, whatever its protocol: a JSON body of at
//! most `MAX_REQUEST_BODY_BYTES`, read within the request's deadline, given up once the
//! worker drains, with a Content-Type that says JSON. Its failures are the wire format's
//! own (`WireError`) or the request's (a timeout, a hang-up, the drain).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::WireError;
use super::{AppState, entries};
use falcon_app::pipeline::{InferError, RequestMeta};

/// Why a body could not be read: too large, the client gone, or not HTTP we understand (a
/// malformed chunked encoding is the client's bad request, 400, not a hang-up).
fn body_error(e: &(dyn std::error::Error + 'static), limit: usize) -> InferError {
    let mut source = Some(e);
    let mut hyper_says_closed = false;
    while let Some(err) = source {
        if err.is::<LengthLimitError>() {
            return WireError::PayloadTooLarge { limit }.into();
        }
        if err.is::<OverBudget>() {
            return InferError::Overloaded("the bodies being received hold MAX_BODY_BYTES_IN_FLIGHT");
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                    WireError::InvalidJson("the body's chunked encoding is malformed".into()).into()
                }
                _ => InferError::ClientClosed,
            };
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            hyper_says_closed |= h.is_incomplete_message() || h.is_closed() || h.is_canceled();
        }
        source = err.source();
    }
    if hyper_says_closed {
        return InferError::ClientClosed;
    }
    WireError::InvalidJson("the request body could not be read".into()).into()
}

/// Whether the body says it is JSON. A body without a Content-Type counts as JSON only where
/// the protocol allows it (`absent_is_json`: the Open Inference Protocol, whose clients, such
/// as tritonclient, send none).
fn is_json(headers: &HeaderMap, absent_is_json: bool) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return absent_is_json;
    };
    let Ok(ct) = ct.to_str() else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// What a route expects of its JSON body.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyRules {
    /// The fixed message for a body that is JSON of the wrong shape.
    pub shape: &'static str,
    /// A body without a Content-Type is read as JSON (else it is 415).
    pub absent_is_json: bool,
    /// The body holds a batch (`Entries`): its parse stops past `MAX_BATCH_TEXTS` entries,
    /// and this says so in the protocol's terms (given the limit).
    pub batch: Option<fn(usize) -> String>,
}

impl BodyRules {
    pub const fn json(shape: &'static str) -> Self {
        Self { shape, absent_is_json: false, batch: None }
    }
}

/// `MAX_BODY_BYTES_IN_FLIGHT`: the bytes of request bodies being received at once, all
/// connections together. A body reserves its declared length before its first byte is
/// read (a chunked one, each chunk as it comes); past the budget it gets 503 `overloaded`
/// at once, so clients that stall just short of the end cannot pin the worker's memory.
#[derive(Clone)]
pub struct BodyBudget(Arc<Semaphore>);

impl BodyBudget {
    pub fn new(bytes: u32) -> Self {
        Self(Arc::new(Semaphore::new(bytes as usize)))
    }

    /// `bytes` more for `held`, or `OverBudget`.
    fn take(&self, bytes: usize, held: &mut Option<OwnedSemaphorePermit>) -> Result<(), OverBudget> {
        if bytes == 0 {
            return Ok(());
        }
        let n = u32::try_from(bytes).map_err(|_| OverBudget)?;
        let permit = Arc::clone(&self.0).try_acquire_many_owned(n).map_err(|_| OverBudget)?;
        match held {
            Some(h) => h.merge(permit),
            None => *held = Some(permit),
        }
        Ok(())
    }
}

/// The bodies being received already hold `MAX_BODY_BYTES_IN_FLIGHT`.
#[derive(Debug, thiserror::Error)]
#[error("the bodies being received hold MAX_BODY_BYTES_IN_FLIGHT")]
struct OverBudget;

/// The body's bytes, at most `limit` of them, in one buffer sized by the declared length:
/// each chunk is copied in and freed as it arrives, so a body costs its size once. The
/// bytes are reserved in `budget` first; `held` keeps them until the caller is done.
async fn collect(
    body: Body,
    limit: usize,
    declared: Option<usize>,
    budget: &BodyBudget,
    held: &mut Option<OwnedSemaphorePermit>,
) -> Result<Vec<u8>, axum::BoxError> {
    let reserved = declared.unwrap_or(0).min(limit);
    budget.take(reserved, held)?;
    let mut body = Limited::new(body, limit);
    let mut bytes = Vec::with_capacity(reserved);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let beyond = (bytes.len() + data.len()).saturating_sub(reserved.max(bytes.len()));
            budget.take(beyond, held)?;
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// A body as it arrived, its bytes still reserved in the in-flight budget until it is dropped.
pub(super) struct Received {
    pub bytes: Vec<u8>,
    _held: Option<OwnedSemaphorePermit>,
}

/// The one body reader of every inference route, whatever its protocol: at most
/// `MAX_REQUEST_BODY_BYTES`, read within the request's deadline, given up (503) once the
/// worker drains.
pub(super) async fn receive(
    s: &AppState,
    meta: &RequestMeta,
    headers: &HeaderMap,
    body: Body,
) -> Result<Received, InferError> {
    let limit = s.max_body_bytes;
    let deadline = meta.received + s.pipeline.request_timeout();
    // A body still arriving when the worker starts to drain is not waited for: the client
    // gets 503 at once (a load balancer retries it elsewhere), and shutdown is not held up.
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<usize>().ok());
    // Held until the body is parsed: its bytes count against the budget until then.
    let mut held = None;
    let read = tokio::select! {
        biased;
        read = falcon_app::deadline::within(deadline, collect(body, limit, declared, &s.body_budget, &mut held)) => read,
        () = s.pipeline.readiness().drained() => return Err(InferError::NotReady("draining; send the request again")),
    };
    let read = read.map_err(|_| InferError::BodyTimeout(s.pipeline.request_timeout()))?;
    let bytes = read.map_err(|e| body_error(e.as_ref(), limit))?;
    Ok(Received { bytes, _held: held })
}

/// A compressed body is refused, not read as bytes it is not.
pub(super) fn uncompressed(headers: &HeaderMap) -> Result<(), InferError> {
    match headers.get(header::CONTENT_ENCODING) {
        Some(encoding) if !encoding.as_bytes().eq_ignore_ascii_case(b"identity") => {
            Err(WireError::UnsupportedEncoding(super::error::shown(&String::from_utf8_lossy(encoding.as_bytes())))
                .into())
        }
        _ => Ok(()),
    }
}

/// `receive`, then the body as JSON of the route's shape: with a Content-Type that says
/// JSON, uncompressed.
pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    s: &AppState,
    meta: &RequestMeta,
    headers: &HeaderMap,
    body: Body,
    rules: BodyRules,
) -> Result<T, InferError> {
    let received = receive(s, meta, headers, body).await?;
    json_headers(headers, rules.absent_is_json)?;
    parse_json(s, &received.bytes, rules)
}

/// The headers of a JSON body: a Content-Type that says JSON (or none, where
/// `absent_is_json`), and no compression.
pub(super) fn json_headers(headers: &HeaderMap, absent_is_json: bool) -> Result<(), InferError> {
    if !is_json(headers, absent_is_json) {
        return Err(WireError::UnsupportedMediaType.into());
    }
    uncompressed(headers)
}

/// JSON bytes as the route's request. Its messages are fixed: serde's own can quote the
/// input (`invalid type: string "…"`), and raw text never reaches an error body, a log line
/// or a row.
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    s: &AppState,
    bytes: &[u8],
    rules: BodyRules,
) -> Result<T, InferError> {
    let BodyRules { shape, batch, .. } = rules;
    let parse = || serde_json::from_slice(bytes);
    let (parsed, exceeded) = match batch {
        Some(_) => entries::with_limit(s.pipeline.max_batch_texts(), parse),
        None => (parse(), false),
    };
    if let (true, Some(too_many)) = (exceeded, batch) {
        return Err(InferError::Validation(too_many(s.pipeline.max_batch_texts())));
    }
    parsed.map_err(|e| {
        use serde_json::error::Category;
        let at = format!("at line {} column {}", e.line(), e.column());
        match e.classify() {
            Category::Data => InferError::Validation(format!("{shape} ({at})")),
            Category::Eof => WireError::InvalidJson(format!("unexpected end of input {at}")).into(),
            Category::Syntax | Category::Io => WireError::InvalidJson(format!("syntax error {at}")).into(),
        }
    })
}
