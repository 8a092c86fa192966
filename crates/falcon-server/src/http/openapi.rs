//! The OpenAPI 3.1 document (`GET /openapi.json`) and the Swagger UI (`GET /docs`).
//!
//! The document is generated from the handlers' `#[utoipa::path]` attributes and the body
//! types, and the router is built from the same list (`utoipa_axum::OpenApiRouter`), so a
//! route cannot exist without being documented. The error types, their statuses and their
//! descriptions come from `falcon_app::error_type`, the table the metric series are registered from.

use std::collections::BTreeMap;

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, Modify, OpenApi};

pub use super::error::{ErrorBody, ErrorTypeSchema};

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
    components(schemas(ErrorBody, ErrorTypeSchema, super::oip::OipModelName)),
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

/// The errors every inference route answers with (`POST /infer` adds 409 for its key), from
/// the one table (`falcon_app::error_type`): each status lists its error types and what they mean.
pub struct InferenceErrors;

impl IntoResponses for InferenceErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        super::error::error_responses(&super::error::INFERENCE_ERRORS, super::error::status, "ErrorBody")
    }
}

/// Completes the generated document with what every operation shares: any status it does not
/// list (a route-level error such as `uri_too_long`, `headers_too_large` or
/// `internal_error`) comes as `ErrorBody`.
pub fn finish(mut doc: Document) -> Document {
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
