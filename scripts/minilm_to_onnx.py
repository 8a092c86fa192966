#!/usr/bin/env python3
"""Writes the ONNX graph of a BERT-family sentence encoder from its own safetensors, for the
minilm backend's ONNX Runtime (MINILM_RUNTIME=onnx).

No PyTorch and no exporter: the graph is built node by node with the `onnx` package from the
folder's config.json and model.safetensors (read here directly: an 8-byte header length, a
JSON header, raw little-endian tensors), so it holds exactly those weights. It computes what
candle-transformers' BertModel does (and Hugging Face's BertModel): embeddings (word +
position + token type 0), LayerNorm, then per layer self-attention with the additive mask,
output projection + residual + LayerNorm, GELU (erf) feed-forward + residual + LayerNorm.

Inputs: input_ids and attention_mask, int64 [batch, tokens]. Output: last_hidden_state,
float32 [batch, tokens, hidden]; the backend pools it (mean over the mask) and normalises it.
The safetensors' SHA-256 is stored in the graph's metadata (`safetensors_sha256`), and the
backend checks it against the folder's weights.

usage: minilm_to_onnx.py DIR [OUT]   (OUT defaults to DIR/model.onnx)
"""
import hashlib
import json
import math
import os
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DTYPES = {"F32": np.float32, "I64": np.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        tensors[name] = np.frombuffer(data[base + start : base + end], dtype=DTYPES[spec["dtype"]]).reshape(spec["shape"])
    return tensors, hashlib.sha256(data).hexdigest()


def main():
    folder = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(folder, "model.onnx")
    config = json.load(open(os.path.join(folder, "config.json")))
    weights, sha256 = read_safetensors(os.path.join(folder, "model.safetensors"))
    prefix = "bert." if any(k.startswith("bert.") for k in weights) else ""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = hidden // heads
    eps = float(config.get("layer_norm_eps", 1e-12))
    if config.get("hidden_act", "gelu") != "gelu":
        sys.exit(f"hidden_act {config['hidden_act']!r}: this script writes the erf GELU only")

    nodes, inits = [], []
    counter = [0]

    def w(name):
        return weights[prefix + name]

    def init(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op, inputs, **attrs):
        counter[0] += 1
        out_name = f"{op.lower()}_{counter[0]}"
        nodes.append(helper.make_node(op, inputs, [out_name], **attrs))
        return out_name

    def linear(x, name):
        # Weights stored transposed, [in, out], so MatMul needs no transpose at run time.
        y = node("MatMul", [x, init(name + ".weight_t", w(name + ".weight").T)])
        return node("Add", [y, init(name + ".bias", w(name + ".bias"))])

    def layer_norm(x, name):
        return node(
            "LayerNormalization",
            [x, init(name + ".weight", w(name + ".weight")), init(name + ".bias", w(name + ".bias"))],
            axis=-1,
            epsilon=eps,
        )

    # Embeddings: word + position (0..tokens) + token type 0.
    words = node("Gather", [init("word_embeddings", w("embeddings.word_embeddings.weight")), "input_ids"])
    # The first `tokens` rows of the position table (1-D starts and ends, as Slice wants).
    tokens = node("Shape", ["input_ids"], start=1, end=2)
    pos = node("Slice", [init("position_embeddings", w("embeddings.position_embeddings.weight")),
                         init("zero", np.array([0], dtype=np.int64)), tokens, init("axis_0", np.array([0], dtype=np.int64))])
    token_type = init("token_type_0", w("embeddings.token_type_embeddings.weight")[0])
    x = node("Add", [node("Add", [words, pos]), token_type])
    x = layer_norm(x, "embeddings.LayerNorm")

    # Additive mask [batch, 1, 1, tokens]: 0 where attended, float32 min where padded.
    mask = node("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    mask = node("Unsqueeze", [mask, init("axes_1_2", np.array([1, 2], dtype=np.int64))])
    mask = node("Mul", [node("Sub", [init("f_one", np.array(1.0, dtype=np.float32)), mask]),
                        init("f_min", np.array(np.finfo(np.float32).min, dtype=np.float32))])

    split_shape = init("split_heads", np.array([0, 0, heads, head_dim], dtype=np.int64))
    merge_shape = init("merge_heads", np.array([0, 0, hidden], dtype=np.int64))
    scale = init("scale", np.array(1.0 / math.sqrt(head_dim), dtype=np.float32))
    sqrt2 = init("sqrt2", np.array(math.sqrt(2.0), dtype=np.float32))
    half = init("half", np.array(0.5, dtype=np.float32))

    def heads_of(y, perm):
        return node("Transpose", [node("Reshape", [y, split_shape])], perm=perm)

    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q = heads_of(linear(x, p + "attention.self.query"), [0, 2, 1, 3])
        k = heads_of(linear(x, p + "attention.self.key"), [0, 2, 3, 1])
        v = heads_of(linear(x, p + "attention.self.value"), [0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), mask])
        probs = node("Softmax", [scores], axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge_shape])
        x = layer_norm(node("Add", [linear(ctx, p + "attention.output.dense"), x]), p + "attention.output.LayerNorm")
        inner = linear(x, p + "intermediate.dense")
        gelu = node("Mul", [node("Mul", [inner, half]), node("Add", [node("Erf", [node("Div", [inner, sqrt2])]), init(f"l{i}_one", np.array(1.0, dtype=np.float32))])])
        x = layer_norm(node("Add", [linear(gelu, p + "output.dense"), x]), p + "output.LayerNorm")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))

    graph = helper.make_graph(
        nodes,
        "bert_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "tokens", hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="falcon minilm_to_onnx.py")
    model.ir_version = 8
    helper.set_model_props(model, {"safetensors_sha256": sha256, "made_by": "scripts/minilm_to_onnx.py"})
    onnx.checker.check_model(model)
    tmp = out + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, out)
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB) from weights sha256 {sha256[:16]}")


if __name__ == "__main__":
    main()
