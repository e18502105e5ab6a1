"""benchmarks/load.py --quick: a real uvicorn process under 50 clients for 5 s and a 50 MB streamed upload.
No request may fail; the figures are checked for shape and sanity only (timings are reported, not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from service_support import REPO

pytestmark = [pytest.mark.load, pytest.mark.slow]


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_quick_load_run_has_no_errors_and_reports_every_figure(tmp_path):
    out = tmp_path / "load.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "load.py"), "--quick", "--out", str(out), "--work-dir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "load benchmark (quick" in run.stdout and "p99" in run.stdout

    result = json.loads(out.read_text())
    assert result["mode"] == "quick"
    assert result["api"]["url"].startswith("http://127.0.0.1:")
    serve = result["serve"]
    assert serve["errors"] == 0 and serve["error_samples"] == []
    assert serve["clients"] == 50 and serve["seconds"] >= 5
    assert serve["requests"] > 0 and _positive(serve["requests_per_s"])
    for kind in ("manifest", "artifact"):
        latency = serve["latency_ms"][kind]
        assert latency["count"] > 0 and 0 < latency["p50"] <= latency["p99"]
    assert set(serve["artifact_bytes"]) == {"synthetic.parquet", "reference.safetensors", "manifest.json"}
    assert _positive(serve["downloaded_bytes"]) and _positive(serve["download_mb_per_s"])

    ingest = result["ingest"]
    assert 45_000_000 <= ingest["block_bytes"] <= 60_000_000 and ingest["rows"] > 0
    for key in ("upload_s", "upload_mb_per_s", "upload_again_s", "upload_again_mb_per_s", "disk_write_s",
                "disk_write_mb_per_s", "disk_write_fsync_s", "disk_write_fsync_mb_per_s"):  # fmt: skip
        assert _positive(ingest[key]), key
    rss = result["rss"]
    for key in ("prepare_first_mb", "serve_peak_mb", "ingest_new_peak_mb", "after_ingest_first_mb", "peak_mb"):
        assert _positive(rss[key]), key
    assert rss["peak_mb"] >= rss["prepare_first_mb"]
    assert not list(tmp_path.glob("diet-load-*")), "the temporary service folder was left behind"
