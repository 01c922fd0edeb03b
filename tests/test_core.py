"""The serving core stays free of the HTTP layer: no Flask, Werkzeug or marshmallow imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import inference_app

#: Every module of the core, found on disk so that a new one is checked too, and the demos.
CORE_MODULES = [
    f"inference_app.core.{path.stem}"
    for path in sorted((Path(inference_app.__file__).parent / "core").glob("*.py"))
    if path.stem != "__init__"
] + ["inference_app.demo", "inference_app.datasets"]


def test_core_imports_no_http_framework() -> None:
    assert {"inference_app.core.dataplane", "inference_app.core.datatypes"} <= set(CORE_MODULES)
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
