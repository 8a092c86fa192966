//! Triton's model configuration extension: `GET /v2/models/{name}/config` answers the model's
//! configuration in the JSON form of Triton's `ModelConfig` (integers as numbers, as Triton
//! writes them), which `perf_analyzer` and tritonclient's `get_model_config` read.
//!
//! It says how the model really runs. A request is a batch of up to `MAX_BATCH_TEXTS` texts,
//! so `max_batch_size` is that, and each batch element is one text: the input's dims are `[1]`
//! (the tensor `[n, 1]`; `[n]` is taken too), so `perf_analyzer` needs no `--shape`. The
//! `label` output is `[n]`: dims `[1]` reshaped to `[]`, Triton's idiom for a scalar per
//! element. (`perf_analyzer` reads an input's `reshape` as the shape to send, so the input
//! has none.)
//! The inference threads take whatever texts are waiting, up to `MAX_BATCH_SIZE`; for a model
//! that prefers batches (minilm) they wait up to `MAX_BATCH_WAIT_MS` for more: dynamic
//! batching with that queue delay (0 for the TF-IDF model).

use serde::Serialize;
use utoipa::ToSchema;

/// A model's configuration, as Triton's model configuration extension gives it.
#[derive(Serialize, ToSchema)]
pub struct OipModelConfig {
    name: String,
    platform: String,
    backend: &'static str,
    version_policy: VersionPolicy,
    /// The most texts one request may hold (`MAX_BATCH_TEXTS`).
    max_batch_size: usize,
    input: Vec<ConfigTensor>,
    output: Vec<ConfigTensor>,
    dynamic_batching: DynamicBatching,
    instance_group: Vec<InstanceGroup>,
    model_transaction_policy: TransactionPolicy,
    /// Falcon's own: the model version served, and its classes in the order of
    /// `probabilities`' columns (comma-separated).
    #[schema(value_type = Object)]
    parameters: std::collections::BTreeMap<&'static str, StringValue>,
}

#[derive(Serialize, ToSchema)]
struct VersionPolicy {
    latest: Latest,
}

#[derive(Serialize, ToSchema)]
struct Latest {
    num_versions: u32,
}

/// An input or output of the configuration.
#[derive(Serialize, ToSchema)]
struct ConfigTensor {
    name: &'static str,
    /// `TYPE_STRING` or `TYPE_FP32`.
    data_type: &'static str,
    /// Each batch element's shape (the batch dimension is not in it).
    dims: Vec<i64>,
    /// The shape the model sees of each element: `[]`, a scalar.
    #[serde(skip_serializing_if = "Option::is_none")]
    reshape: Option<Reshape>,
    is_shape_tensor: bool,
}

#[derive(Serialize, ToSchema)]
struct Reshape {
    shape: Vec<i64>,
}

#[derive(Serialize, ToSchema)]
struct DynamicBatching {
    preferred_batch_size: Vec<u32>,
    max_queue_delay_microseconds: u64,
    preserve_ordering: bool,
}

#[derive(Serialize, ToSchema)]
struct InstanceGroup {
    name: String,
    kind: &'static str,
    /// The inference threads (`INFERENCE_THREADS`).
    count: usize,
}

#[derive(Serialize, ToSchema)]
struct TransactionPolicy {
    decoupled: bool,
}

#[derive(Serialize, ToSchema)]
struct StringValue {
    string_value: String,
}

/// What the configuration is made of: the served model and how the worker batches.
pub struct Served<'a> {
    pub name: &'a str,
    pub backend: &'static str,
    pub version: &'a str,
    pub labels: &'a [String],
    pub max_batch_texts: usize,
    pub threads: usize,
    pub max_batch_size: usize,
    pub max_wait: std::time::Duration,
}

impl OipModelConfig {
    pub fn of(m: &Served) -> Self {
        let scalar = || Some(Reshape { shape: Vec::new() });
        let tensor =
            |name, data_type, dims, reshape| ConfigTensor { name, data_type, dims, reshape, is_shape_tensor: false };
        let parameters = [
            ("model_version", m.version.to_owned()),
            ("labels", m.labels.join(",")),
            ("max_batch_size", m.max_batch_size.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k, StringValue { string_value: v }))
        .collect();
        Self {
            name: m.name.to_owned(),
            platform: format!("falcon_{}", m.backend),
            backend: m.backend,
            version_policy: VersionPolicy { latest: Latest { num_versions: 1 } },
            max_batch_size: m.max_batch_texts,
            input: vec![tensor("text", "TYPE_STRING", vec![1], None)],
            output: vec![
                tensor("label", "TYPE_STRING", vec![1], scalar()),
                tensor("probabilities", "TYPE_FP32", vec![m.labels.len() as i64], None),
            ],
            dynamic_batching: DynamicBatching {
                preferred_batch_size: Vec::new(),
                max_queue_delay_microseconds: u64::try_from(m.max_wait.as_micros()).unwrap_or(u64::MAX),
                preserve_ordering: true,
            },
            instance_group: vec![InstanceGroup { name: format!("{}_0", m.name), kind: "KIND_CPU", count: m.threads }],
            model_transaction_policy: TransactionPolicy { decoupled: false },
            parameters,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_configuration_says_how_the_model_batches_in_triton_s_terms() {
        let labels = ["negative", "neutral", "positive"].map(String::from);
        let served = Served {
            name: "sentiment",
            backend: "tfidf",
            version: "v1",
            labels: &labels,
            max_batch_texts: 64,
            threads: 2,
            max_batch_size: 32,
            max_wait: std::time::Duration::ZERO,
        };
        let config = serde_json::to_value(OipModelConfig::of(&served)).unwrap();
        assert_eq!(config["max_batch_size"], 64);
        assert_eq!(
            config["input"],
            json!([{"name": "text", "data_type": "TYPE_STRING", "dims": [1], "is_shape_tensor": false}])
        );
        assert_eq!(config["output"][0]["reshape"], json!({"shape": []}));
        assert_eq!(config["output"][1]["dims"], json!([3]));
        assert_eq!(config["output"][1]["data_type"], "TYPE_FP32");
        assert_eq!(config["dynamic_batching"]["max_queue_delay_microseconds"], 0);
        assert_eq!(config["instance_group"][0]["count"], 2);
        assert_eq!(config["parameters"]["labels"]["string_value"], "negative,neutral,positive");
        assert_eq!(config["parameters"]["max_batch_size"]["string_value"], "32");
        // A model that waits to gather a batch says so as Triton's queue delay.
        let waits = Served { backend: "minilm", max_wait: std::time::Duration::from_millis(5), ..served };
        let config = serde_json::to_value(OipModelConfig::of(&waits)).unwrap();
        assert_eq!(config["dynamic_batching"]["max_queue_delay_microseconds"], 5000);
    }
}
