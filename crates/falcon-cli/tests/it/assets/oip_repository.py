"""tritonclient[http] against a Falcon worker serving a model repository.

    oip_repository.py HOST:PORT MODEL=TEXT...

Prints one JSON object: the repository index as the client reads it, each model's answer to
its text (label, and the client's model name), the statistics of each model, and what the
client sees of an unloaded model and after loading it again.
"""
import json
import sys

import numpy as np
import tritonclient.http as http

url, asks = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
client = http.InferenceServerClient(url=url)


def infer(model, text):
    tensor = http.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([text], dtype=object).reshape(1, 1))
    result = client.infer(model, [tensor])
    return {"model": result.get_response()["model_name"], "label": result.as_numpy("label")[0].decode()}


out = {"index": client.get_model_repository_index(), "answers": {m: infer(m, t) for m, t in asks}}
out["stats"] = {s["name"]: s for s in client.get_inference_statistics()["model_stats"]}
last = asks[-1][0]
client.unload_model(last)
out["ready_after_unload"] = client.is_model_ready(last)
try:
    infer(last, "anything")
    out["infer_after_unload"] = "answered"
except Exception as e:  # tritonclient raises InferenceServerException
    out["infer_after_unload"] = str(e)
client.load_model(last)
out["ready_after_load"] = client.is_model_ready(last)
out["answer_after_load"] = infer(last, asks[-1][1])
print(json.dumps(out))
