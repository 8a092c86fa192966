"""The peer Falcon is measured against in `make bench`: MLServer (Seldon) serving a
scikit-learn TF-IDF + logistic-regression pipeline trained on the same VADER split
(scripts/peer/train.py), with Falcon's tensors: a BYTES input of texts in, `label` (BYTES)
and `probabilities` (FP32, [n, 3]) out.

A custom runtime rather than mlserver-sklearn's: that one hands the pipeline a 2-D array of
bytes, which a TfidfVectorizer cannot read, and answers one output. The work per request is
what mlserver-sklearn would do (decode, `predict_proba`, encode). It also answers Triton's
model-configuration route, which MLServer does not have and perf_analyzer asks for once
before it starts; nothing else is added to MLServer.
"""
import joblib
import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.handlers import custom_handler
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

LABELS = ["negative", "neutral", "positive"]


class SentimentRuntime(MLModel):
    async def load(self) -> bool:
        self._pipeline = joblib.load(await get_model_uri(self.settings))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = StringCodec.decode_input(payload.inputs[0])
        probabilities = self._pipeline.predict_proba(texts).astype(np.float32)
        labels = [LABELS[i] for i in probabilities.argmax(axis=1)]
        outputs = [
            StringCodec.encode_output("label", labels),
            NumpyCodec.encode_output("probabilities", probabilities),
        ]
        # Without the codecs' `content_type` parameters: perf_analyzer's client reads an
        # output that has parameters as one with `binary_data_size`, and fails without it.
        for output in outputs:
            output.parameters = None
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=outputs)

    @custom_handler(rest_path="/v2/models/sentiment/config", rest_method="GET")
    async def config(self) -> dict:
        # The same configuration as Falcon's for its model (dims exclude the batch dimension).
        return {
            "name": "sentiment",
            "max_batch_size": 64,
            "input": [{"name": "text", "data_type": "TYPE_STRING", "dims": [1]}],
            "output": [
                {"name": "label", "data_type": "TYPE_STRING", "dims": [1]},
                {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [3]},
            ],
        }
