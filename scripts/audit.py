"""Audit installed dependencies with pip-audit, saying plainly when no advisory source answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def main() -> int:
    """Run pip-audit on this environment; fail on a known vulnerability only."""
    pip_audit = Path(sys.executable).parent / "pip-audit"
    try:
        result = subprocess.run(
            [str(pip_audit), "--format", "json", "--progress-spinner", "off", "--local"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        report = json.loads(result.stdout or "{}")
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as error:
        print(f"pip-audit: no advisory source reachable, nothing audited ({error})")
        return 0
    dependencies = report.get("dependencies", [])
    audited = [dep for dep in dependencies if "skip_reason" not in dep]
    vulnerable = [dep for dep in audited if dep.get("vulns")]
    if not audited:
        print(
            f"pip-audit: no advisory source reachable, nothing audited "
            f"({len(dependencies)} dependencies skipped)"
        )
        return 0
    for dep in vulnerable:
        ids = ", ".join(vuln["id"] for vuln in dep["vulns"])
        print(f"pip-audit: {dep['name']} {dep['version']}: {ids}")
    skipped = len(dependencies) - len(audited)
    print(f"pip-audit: {len(audited)} audited, {skipped} skipped, {len(vulnerable)} vulnerable")
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main())
