"""benchmarks/load.py --quick: `diet serve` with 1 and 2 API processes under 50 clients for 5 s each, plain
static-file readers of the same files, and a 50 MB streamed upload.
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
        cwd=tmp_path, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "load benchmark (quick" in run.stdout and "p99" in run.stdout

    result = json.loads(out.read_text())
    assert result["mode"] == "quick"
    assert set(result["artifact_bytes"]) == {"synthetic.parquet", "reference.safetensors", "manifest.json"}
    one, several = result["rows"]
    assert (one["api_processes"], several["api_processes"]) == (1, 2)
    for serve in (one["serve"], several["serve"], result["static"]):
        assert serve["errors"] == 0 and serve["error_samples"] == []
        assert serve["seconds"] >= 5 and serve["requests"] > 0 and _positive(serve["requests_per_s"])
        assert _positive(serve["downloaded_bytes"]) and _positive(serve["download_mb_per_s"])
        assert serve["cpu"]["wall_s"] > 0 and 0 <= serve["cpu"]["machine_busy_pct"] <= 100
    for serve in (one["serve"], several["serve"], result["static"]):  # static: the artifacts from a plain server
        assert serve["clients"] == 50 and serve["manifest_clients"] == 25 and serve["artifact_clients"] == 25
        assert serve["client_processes"] == 2
        for kind in ("manifest", "artifact"):
            latency = serve["latency_ms"][kind]
            assert latency["count"] > 0 and 0 < latency["p50"] <= latency["p99"]
    assert set(result["artifacts_vs_static_pct"]) == {"1_process", "2_process"}

    ingest = one["ingest"]
    assert 45_000_000 <= ingest["block_bytes"] <= 60_000_000 and ingest["rows"] > 0
    for key in ("upload_s", "upload_mb_per_s", "upload_again_s", "upload_again_mb_per_s", "disk_write_s",
                "disk_write_mb_per_s", "disk_write_fsync_s", "disk_write_fsync_mb_per_s", "upload_vs_plain_write_pct"):  # fmt: skip
        assert _positive(ingest[key]), key
    rss = one["rss"]
    for key in ("prepare_first_mb", "serve_peak_mb", "ingest_new_peak_mb", "after_ingest_first_mb", "peak_mb"):
        assert _positive(rss[key]), key
    assert rss["peak_mb"] >= rss["prepare_first_mb"]
    assert several["rss"]["serve_peak_mb"] > 0
    assert not list(tmp_path.glob("diet-load-*")), "the temporary service folder was left behind"
