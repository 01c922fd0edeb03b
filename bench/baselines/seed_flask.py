"""The seed-style Flask model server the articles show, kept as a benchmark baseline.

What a tutorial writes: ``joblib.load`` at import, ``request.json``, ``model.predict``,
``jsonify``; served with ``gunicorn -w 2 -k sync``. It loads the demo estimators written by
``inference_app.demo.write_demo_bundles`` from ``$BENCH_MODELS_DIR/<name>/1/model.joblib``.
Deliberately naive (no validation, metrics or structured logs): do not copy it.

    POST /predict/<name>   {"instances": [[...], ...]} -> {"predictions": [...]}
"""

import os
from pathlib import Path

import joblib
import numpy as np
from flask import Flask, jsonify, request

MODELS_DIR = Path(os.environ.get("BENCH_MODELS_DIR", "models"))
models = {
    name: joblib.load(MODELS_DIR / name / "1" / "model.joblib")
    for name in os.environ.get("BENCH_MODELS", "iris,breast_cancer").split(",")
}

app = Flask(__name__)


@app.route("/predict/<name>", methods=["POST"])
def predict(name):
    data = request.json
    predictions = models[name].predict(np.array(data["instances"]))
    return jsonify(predictions=predictions.tolist())
