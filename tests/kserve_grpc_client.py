"""KServe's InferenceGRPCClient against a server: run by tests/test_grpc_e2e.py in .venv-kserve.

KServe's SDK pins pandas below 3, which this project does not, so it lives in a virtualenv of
its own (`make kserve-client`) and this script is its side of the test: it reads
``{model: rows}`` as JSON on stdin, asks the server at ``argv[1]`` for health and for
``predict`` and ``predict_proba`` of each model's rows, sent raw and as typed contents, and
prints what came back as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.infer_type import RequestedOutput


async def main(address: str, datasets: dict[str, Any]) -> dict[str, Any]:
    client = InferenceGRPCClient(url=address, timeout=60)
    try:
        found: dict[str, Any] = {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "model_ready": all([await client.is_model_ready(name) for name in datasets]),
        }
        for name, rows in datasets.items():
            array = np.asarray(rows, dtype=np.float64)
            found[name] = {}
            for form in ("raw", "typed"):
                tensor = InferInput(name="input-0", shape=list(array.shape), datatype="FP64")
                tensor.set_data_from_numpy(array, binary_data=form == "raw")
                request = InferRequest(
                    model_name=name,
                    infer_inputs=[tensor],
                    request_id=f"kserve-{name}-{form}",
                    request_outputs=[RequestedOutput("predict"), RequestedOutput("predict_proba")],
                )
                response = await client.infer(request)
                outputs = {output.name: output for output in response.outputs}
                labels = outputs["predict"].as_numpy()
                found[name][form] = {
                    "id": response.id,
                    "predict": [v.decode() if isinstance(v, bytes) else v for v in labels.tolist()],
                    "predict_proba": outputs["predict_proba"].as_numpy().tolist(),
                }
        return found
    finally:
        await client.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], json.load(sys.stdin)))))
