"""Trains the peer's model (scripts/peer/runtime.py) on Falcon's own VADER train split and
writes an MLServer model folder.

    train.py OUT_DIR

The split is Falcon's (falcon-model's `stratified_split`: SplitMix64, seed 42, 20 % test per
class), so both servers learn from the same 80 % of the sentences. The pipeline is a TF-IDF
of word 1- and 2-grams (sublinear term frequency) and a logistic regression; it prints its
test accuracy so anyone can check that the peer is a real model.
"""
import json
import sys
from pathlib import Path

import joblib
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

ROOT = Path(__file__).resolve().parents[2]
MASK = (1 << 64) - 1


def vader():
    texts, labels = [], []
    for path in sorted((ROOT / "data/vader").glob("*_GroundTruth.txt")):
        for line in path.read_bytes().decode("utf-8", "replace").splitlines():
            line = line.rstrip("\r")
            if not line.strip():
                continue
            _, rating, text = line.split("\t", 2)
            rating = float(rating)
            texts.append(text)
            labels.append(0 if rating <= -0.5 else 2 if rating >= 0.5 else 1)
    return texts, labels


def split(labels, test_fraction=0.2, seed=42):
    state = seed

    def below(n):
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return (z ^ (z >> 31)) % n

    train, test = [], []
    for k in range(max(labels) + 1):
        idx = [i for i, label in enumerate(labels) if label == k]
        for i in range(len(idx) - 1, 0, -1):
            j = below(i + 1)
            idx[i], idx[j] = idx[j], idx[i]
        n_test = int(len(idx) * test_fraction + 0.5)
        test += idx[:n_test]
        train += idx[n_test:]
    return sorted(train), sorted(test)


def main():
    out = Path(sys.argv[1])
    (out / "sentiment").mkdir(parents=True, exist_ok=True)
    texts, labels = vader()
    train, test = split(labels)
    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        LogisticRegression(max_iter=2000, C=4.0),
    )
    pipeline.fit([texts[i] for i in train], [labels[i] for i in train])
    accuracy = pipeline.score([texts[i] for i in test], [labels[i] for i in test])
    joblib.dump(pipeline, out / "sentiment/model.joblib")
    settings = {
        "name": "sentiment",
        "implementation": "runtime.SentimentRuntime",
        "parameters": {"uri": "./model.joblib", "version": "sklearn-tfidf-lr"},
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }
    (out / "sentiment/model-settings.json").write_text(json.dumps(settings, indent=2))
    print(json.dumps({"train": len(train), "test": len(test), "accuracy": round(accuracy, 4)}))


if __name__ == "__main__":
    main()
