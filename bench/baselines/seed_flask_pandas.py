"""The seed-style Flask server for a pandas pipeline, as the tutorials write it: a baseline.

What a tutorial writes for a pipeline fitted on a DataFrame: ``joblib.load`` at import,
``pd.DataFrame(request.json["instances"])``, ``model.predict(df)``, ``jsonify``; served with
``gunicorn -w 2 -k sync``, like ``seed_flask.py``. A text pipeline is given its column of texts,
``df["text"]``, as its tutorial does (``TfidfVectorizer`` iterates over what it is given, and a
DataFrame's items are its column names). It loads the demo pipelines written by
``inference_app.demo.write_demo_bundles`` from ``$BENCH_MODELS_DIR/<name>/1/model.joblib``.
Deliberately naive (no validation, metrics or structured logs): do not copy it.

    POST /predict/<name>   {"instances": [{"island": "Biscoe", "sex": null, ...}, ...]}
                           -> {"predictions": [...]}
"""

import os
from pathlib import Path

import joblib
import pandas as pd
from flask import Flask, jsonify, request

MODELS_DIR = Path(os.environ.get("BENCH_MODELS_DIR", "models"))
models = {
    name: joblib.load(MODELS_DIR / name / "1" / "model.joblib")
    for name in os.environ.get("BENCH_MODELS", "penguins,sentiment").split(",")
}
#: The text pipelines, and the column of texts each is given.
TEXT_COLUMNS = {"sentiment": "text"}

app = Flask(__name__)


@app.route("/predict/<name>", methods=["POST"])
def predict(name):
    df = pd.DataFrame(request.json["instances"])
    if name in TEXT_COLUMNS:
        df = df[TEXT_COLUMNS[name]]
    predictions = models[name].predict(df)
    return jsonify(predictions=predictions.tolist())
