"""The seed-style FastAPI model server the articles show, kept as a benchmark baseline.

What a tutorial writes: ``joblib.load`` at import, a pydantic request model, ``model.predict``
in an ``async def`` route (run on the event loop, not in a thread pool: FastAPI's fastest way for
a route this short); served with ``uvicorn --workers 2 --no-access-log`` (uvloop and httptools,
as ``uvicorn[standard]`` installs).
It loads the demo estimators written by ``inference_app.demo.write_demo_bundles`` from
``$BENCH_MODELS_DIR/<name>/1/model.joblib``. Deliberately naive: do not copy it.

    POST /predict/{name}   {"instances": [[...], ...]} -> {"predictions": [...]}
"""

import os
from pathlib import Path

import joblib
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

MODELS_DIR = Path(os.environ.get("BENCH_MODELS_DIR", "models"))
models = {
    name: joblib.load(MODELS_DIR / name / "1" / "model.joblib")
    for name in os.environ.get("BENCH_MODELS", "iris,breast_cancer").split(",")
}

app = FastAPI()


class PredictRequest(BaseModel):
    instances: list[list[float]]


class PredictResponse(BaseModel):
    predictions: list


@app.post("/predict/{name}", response_model=PredictResponse)
async def predict(name: str, body: PredictRequest):
    predictions = models[name].predict(np.array(body.instances))
    return {"predictions": predictions.tolist()}
