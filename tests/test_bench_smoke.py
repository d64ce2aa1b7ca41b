"""The benchmark harness runs end to end in its short mode; asserts nothing about speed (issue 7)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    os.environ.get("GATEWAY_BENCH_SMOKE") != "1",
    reason="benchmark smoke runs only with GATEWAY_BENCH_SMOKE=1 (starts nginx, haproxy, wrk; may apt-get them)",
)
def test_bench_smoke_runs_and_writes_results() -> None:
    results = ROOT / "bench" / "out" / "RESULTS.smoke.md"
    results.unlink(missing_ok=True)
    env = {**os.environ, "BENCH_PYTHON": os.environ.get("BENCH_PYTHON", sys.executable)}
    proc = subprocess.run(
        [str(ROOT / "bench" / "run"), "--smoke"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "# Gateway benchmark results" in results.read_text()
