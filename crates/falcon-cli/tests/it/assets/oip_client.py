"""A real Open Inference Protocol v2 client (tritonclient[http]) against a Falcon worker.

    oip_client.py HOST:PORT TEXT...

Prints one JSON object: server and model metadata, the model configuration, and the label
and probabilities of each text as the client decoded them, three ways: JSON tensors both
ways; tritonclient's defaults (binary inputs, and binary outputs when none are named); and
classification (the top 2 classes, binary). The Rust test compares them with POST /infer.
"""
import json
import sys

import numpy as np
import tritonclient.http as http

url, texts = sys.argv[1], sys.argv[2:]
client = http.InferenceServerClient(url=url)
out = {
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready("sentiment"),
    "server": client.get_server_metadata(),
    "model": client.get_model_metadata("sentiment"),
    "config": client.get_model_config("sentiment"),
}
tensor = http.InferInput("text", [len(texts)], "BYTES")
tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=False)
outputs = [
    http.InferRequestedOutput("label", binary_data=False),
    http.InferRequestedOutput("probabilities", binary_data=False),
]
result = client.infer("sentiment", [tensor], outputs=outputs, request_id="oip-test")
labels = result.as_numpy("label")
probabilities = result.as_numpy("probabilities")
out["labels"] = [l.decode() if isinstance(l, bytes) else str(l) for l in labels]
out["probabilities"] = probabilities.astype(float).tolist()
out["shape"] = list(probabilities.shape)
out["id"] = result.get_response()["id"]

# The client's defaults: binary input data, and every output as binary data.
binary = http.InferInput("text", [len(texts), 1], "BYTES")
binary.set_data_from_numpy(np.array(texts, dtype=object).reshape(len(texts), 1))
result = client.infer("sentiment", [binary])
out["binary_header"] = {o["name"]: o.get("parameters", {}) for o in result.get_response()["outputs"]}
out["binary_labels"] = [l.decode() for l in result.as_numpy("label")]
out["binary_probabilities"] = result.as_numpy("probabilities").astype(float).tolist()

# Classification: the top 2 classes of each text, as "score:index:label".
top = [http.InferRequestedOutput("probabilities", class_count=2)]
result = client.infer("sentiment", [binary], outputs=top)
out["classes"] = [[c.decode() for c in row] for row in result.as_numpy("probabilities")]
try:
    client.get_model_metadata("no-such-model")
    out["unknown_model"] = "accepted"
except Exception as e:  # tritonclient raises InferenceServerException
    out["unknown_model"] = str(e)
print(json.dumps(out))
