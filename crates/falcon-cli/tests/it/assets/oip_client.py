"""A real Open Inference Protocol v2 client (tritonclient[http]) against a Falcon worker.

    oip_client.py HOST:PORT TEXT...

Prints one JSON object: server and model metadata, and the label and probabilities of each
text as the client decoded them. The Rust test compares them with POST /infer.
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
try:
    client.get_model_metadata("no-such-model")
    out["unknown_model"] = "accepted"
except Exception as e:  # tritonclient raises InferenceServerException
    out["unknown_model"] = str(e)
print(json.dumps(out))
