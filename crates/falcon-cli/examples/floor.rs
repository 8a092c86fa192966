//! The floor for `make bench-http`: a bare axum server with the worker's request and
//! response shapes and nothing else: the same axum, tokio and allocator, JSON in, JSON out,
//! no middleware, no model, no cache, no log. Every Falcon figure is reported as a ratio to
//! this server measured in the same run.
//!
//! `cargo run --release -p falcon-cli --example floor [ADDR]` prints `listening on ADDR`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use axum::routing::{get, post};
use axum::{Json, Router};
use falcon_server::http::api::{InferRequest, InferResponse};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// POST /infer: reads the body as the worker does, answers a response of the same shape.
async fn infer(Json(request): Json<InferRequest>) -> Json<InferResponse> {
    let positive = if request.text.len() % 2 == 0 { 0.9 } else { 0.1 };
    Json(InferResponse {
        prediction: "positive".into(),
        confidence: positive,
        probabilities: BTreeMap::from([
            ("negative".to_owned(), 0.05),
            ("neutral".to_owned(), 0.05),
            ("positive".to_owned(), positive),
        ]),
        cache_hit: false,
        idempotency_hit: false,
        worker_id: "floor".into(),
        model: "sentiment".into(),
        model_version: "floor".into(),
        processing_time_ms: 0.01,
        request_id: "00000000-0000-0000-0000-000000000000".into(),
    })
}

/// GET /healthz: a small JSON object, as the worker's.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "healthy", "worker_id": "floor" }))
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        println!("listening on {}", listener.local_addr()?);
        let app = Router::new().route("/infer", post(infer)).route("/healthz", get(healthz));
        axum::serve(listener, app).await
    })
}
