"""The serving core stays free of the HTTP layer: no Flask, Werkzeug or marshmallow imports."""

from __future__ import annotations

import subprocess
import sys

CORE_MODULES = [
    "inference_app.core.bundle",
    "inference_app.core.errors",
    "inference_app.core.inputs",
    "inference_app.core.registry",
    "inference_app.core.dataplane",
    "inference_app.demo",
]


def test_core_imports_no_http_framework() -> None:
    script = (
        "import sys\n"
        + "".join(f"import {module}\n" for module in CORE_MODULES)
        + "print(sorted({m.split('.')[0] for m in sys.modules}))\n"
    )
    # A fresh interpreter: this test process has imported Flask already.
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    loaded = result.stdout
    assert "sklearn" in loaded  # the check sees real imports
    for framework in ("flask", "werkzeug", "marshmallow", "flask_smorest", "webargs"):
        assert f"'{framework}'" not in loaded, framework
