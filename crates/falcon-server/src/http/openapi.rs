//! The OpenAPI 3.1 document (`GET /openapi.json`) and the Swagger UI (`GET /docs`).
//!
//! The document is generated from the handlers' `#[utoipa::path]` attributes and the body
//! types, and the router is built from the same list (`utoipa_axum::OpenApiRouter`), so a
//! route cannot exist without being documented. The error types come from
//! `telemetry::metrics::ERROR_TYPES`, the list the metric series are registered from.

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

pub use super::error::ErrorBody;
use crate::telemetry::metrics::ERROR_TYPES;

/// Where the document and the UI are served.
pub const OPENAPI_PATH: &str = "/openapi.json";
pub const DOCS_PATH: &str = "/docs";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Falcon",
        description = "Sentiment classification (negative / neutral / positive) over HTTP. \
            Errors share one body, `ErrorBody`, with a stable `error_type`; every response carries \
            `X-Request-ID`. With API keys configured (`API_KEYS_FILE` or `API_KEYS`), inference and \
            admin routes need `Authorization: Bearer <key>`; health, readiness and metrics stay open.",
        license(name = "MIT", identifier = "MIT"),
    ),
    tags(
        (name = "inference", description = "Classify texts"),
        (name = "open-inference-protocol", description = "The Open Inference Protocol v2 (KServe, Triton, MLServer clients)"),
        (name = "platform", description = "Liveness, readiness and metrics, for load balancers and Prometheus"),
        (name = "admin", description = "Operator actions"),
    ),
    components(schemas(ErrorBody, ErrorType, super::oip::OipModelName)),
    modifiers(&BearerKeys),
)]
pub struct ApiDoc;

/// The `api_key` security scheme the inference and admin routes name.
struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key from API_KEYS_FILE / API_KEYS; needed only when keys are configured"))
                    .build(),
            ),
        );
    }
}

/// The errors both inference routes answer with (`POST /infer` adds 409 for its key).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description for the document only
pub enum InferenceErrors {
    #[response(status = 400, description = "`invalid_json`: the body is not JSON")]
    InvalidJson(ErrorBody<'static>),
    #[response(status = 401, description = "`unauthorized`: API keys are on and the key is missing or unknown",
        headers(("www-authenticate" = String, description = "`Bearer realm=\"falcon\"`")))]
    Unauthorized(ErrorBody<'static>),
    #[response(status = 403, description = "`forbidden`: the key may not use this route")]
    Forbidden(ErrorBody<'static>),
    #[response(status = 408, description = "`request_body_timeout`: the body did not arrive in time")]
    BodyTimeout(ErrorBody<'static>),
    #[response(status = 413, description = "`payload_too_large`: the body is over `MAX_REQUEST_BODY_BYTES`")]
    PayloadTooLarge(ErrorBody<'static>),
    #[response(status = 415, description = "`unsupported_media_type`: the body is not `application/json`")]
    UnsupportedMediaType(ErrorBody<'static>),
    #[response(
        status = 422,
        description = "`validation_error`: JSON of the wrong shape, a text out of bounds, or a batch with no texts or more than `MAX_BATCH_TEXTS`"
    )]
    Validation(ErrorBody<'static>),
    #[response(status = 429, description = "`rate_limited`: over this client's rate limit", headers(
        ("retry-after" = u32, description = "Seconds until a request will be admitted"),
        ("ratelimit-limit" = u32, description = "Requests allowed per window"),
        ("ratelimit-remaining" = u32, description = "Requests left in this window (0)"),
        ("ratelimit-reset" = u32, description = "Seconds until the limit resets"),
        ("ratelimit-policy" = String, description = "`<limit>;w=<window seconds>`"),
    ))]
    RateLimited(ErrorBody<'static>),
    #[response(status = 503, description = "`overloaded` (the queue or `MAX_CONCURRENT_REQUESTS` is full) or `not_ready`",
        headers(("retry-after" = u32, description = "Seconds to wait")))]
    Unavailable(ErrorBody<'static>),
    #[response(status = 504, description = "`inference_timeout` or `request_timeout`")]
    Timeout(ErrorBody<'static>),
}

/// The stable `error_type` of an error body: one of `ERROR_TYPES`.
pub struct ErrorType;

impl PartialSchema for ErrorType {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ERROR_TYPES))
            .description(Some("Stable error name; also the `error_type` label of `inference_errors_total`"))
            .into()
    }
}

impl ToSchema for ErrorType {}

/// Completes the generated document with what every operation shares: any status it does not
/// list (a route-level error such as `uri_too_long`, `headers_too_large` or
/// `internal_error`) comes as `ErrorBody`.
pub fn finish(mut doc: Document) -> Document {
    use utoipa::openapi::ResponseBuilder;
    use utoipa::openapi::content::ContentBuilder;
    let default = ResponseBuilder::new()
        .description(
            "Any other error, in the standard body: `uri_too_long` (414), `headers_too_large` (431), \
             `method_not_allowed` (405), `internal_error` (500), `request_timeout` (504), ...",
        )
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody")))).build(),
        )
        .build();
    for item in doc.paths.paths.values_mut() {
        for op in [&mut item.get, &mut item.post].into_iter().flatten() {
            op.responses.responses.entry("default".to_owned()).or_insert_with(|| default.clone().into());
        }
    }
    doc
}

/// The document as this worker serves it: the text and batch limits are the ones it enforces
/// (the model's `max_input_chars`, `MAX_BATCH_TEXTS`), not the defaults.
pub fn with_limits(doc: Document, max_text_chars: usize, max_batch_texts: usize) -> serde_json::Value {
    let mut value = serde_json::to_value(doc).unwrap_or_default();
    let schemas = &mut value["components"]["schemas"];
    if let Some(text) = schemas.pointer_mut("/InferRequest/properties/text") {
        text["maxLength"] = max_text_chars.into();
    }
    if let Some(texts) = schemas.pointer_mut("/BatchRequest/properties/texts") {
        texts["maxItems"] = max_batch_texts.into();
    }
    value
}

#[cfg(test)]
mod tests {
    /// `docs/openapi.json` is the document the code generates, so a change to the API shows up
    /// in review as a change to that file.
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let committed = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json"));
        let generated = super::super::openapi_document().to_pretty_json().unwrap_or_default();
        assert!(
            committed.trim_end() == generated.trim_end(),
            "docs/openapi.json is out of date: run `cargo run -p falcon-cli -- openapi > docs/openapi.json`"
        );
    }
}
