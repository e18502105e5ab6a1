"""The `diet` CLI end to end against a real `diet serve` (SQLite, folder queue, its own worker):

streams create -> blocks push -> distill --wait -> jobs -> datasets pull (verified, resumable)
-> diet_engine.load_dataset -> train_candidate -> datasets report, rendered in Chromium;
and the exit codes scripts rely on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from browser_support import keep_copy, plot_pixels, screenshot
from service_support import BOOTSTRAP_TOKEN, REPO, Process, free_port
from test_e2e import LIGHT_REFERENCE, ROWS

from diet_engine import load_dataset, train_candidate
from diet_engine.data.blocks import TensorBlock
from diet_engine.train.loops import evaluate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

_SCRIPT = Path(sys.executable).with_name("diet")  # the installed entry point, as users run it
DIET = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "service.cli"]
QUICK = "outer_iters=5"


@dataclass
class Served:
    url: str
    process: Process
    work: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {"DIET_URL": self.url, "DIET_TOKEN": BOOTSTRAP_TOKEN, **extra}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("cli")
    port = free_port()
    env = {
        "DIET_DATA_DIR": str(work / "diet-data"), "DIET_BOOTSTRAP_TOKEN": BOOTSTRAP_TOKEN, "DIET_WORKER_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",  # the worker's torch must not fight the test process for a small machine's cores
    }  # fmt: skip
    process = Process("diet-serve", [*DIET, "serve", "--port", str(port)], env, work)
    try:
        process.wait_healthy(f"http://127.0.0.1:{port}")
        yield Served(f"http://127.0.0.1:{port}", process, work)
    finally:
        process.clean_up()


def diet(served: Served, *args: str, expect: int = 0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `diet ARGS` as a script would (no terminal); assert its exit code."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), **served.env(), **(env or {})}
    done = subprocess.run([*DIET, *args], env=environment, cwd=served.work, capture_output=True, text=True, timeout=300)
    assert done.returncode == expect, (
        f"diet {' '.join(args)} exited {done.returncode}, expected {expect}\n--- stdout\n{done.stdout}\n"
        f"--- stderr\n{done.stderr}\n--- service\n{served.process.logs(3000)}"
    )
    return done


def diet_json(served: Served, *args: str, expect: int = 0) -> object:
    return json.loads(diet(served, *args, "--json", expect=expect).stdout)


def test_push_distill_pull_load_train_and_report(served, ml100k_dir, ml100k_schema, tmp_path):
    assert "ready" in diet(served, "status").stdout
    definition = served.work / "ml_100k.json"
    definition.write_text(json.dumps({"name": "ml_100k", "schema": ml100k_schema, "reference": LIGHT_REFERENCE}))
    stream = diet_json(served, "streams", "create", str(definition))
    assert stream["name"] == "ml_100k" and stream["reference"]["arch"]["embedding_dim"] == 8

    # blocks: one line per file, a progress bar per file on stderr; the same bytes again change nothing
    b1, b2 = ml100k_dir / "b1.parquet", ml100k_dir / "b2.parquet"
    pushed = diet(served, "blocks", "push", "ml_100k", str(b1), str(b2))
    assert "b1.parquet: block 1, stage 1, 17008 rows" in pushed.stdout and "(uploaded)" in pushed.stdout
    assert f"b2.parquet: block 2, stage 2, {ROWS['b2']} rows" in pushed.stdout
    assert "b1.parquet" in pushed.stderr and "b2.parquet" in pushed.stderr  # the bars, drawn once off a terminal
    again = diet_json(served, "blocks", "push", "ml_100k", str(b1))
    assert again[0]["created"] is False and again[0]["block"]["id"] == 1

    # stage 1 with --wait: progress lines on stderr, the outcome on stdout
    first = diet(served, "distill", "ml_100k", "--stage", "1", "--set", QUICK, "--wait")
    assert "stage 1 of ml_100k succeeded -> ml_100k@v1" in first.stdout
    assert "stage 1 · running" in first.stderr and "stage 1 · succeeded" in first.stderr
    # stage 2 queued by one command, waited for by another, as a script would
    job = diet_json(served, "distill", "ml_100k", "--stage", "2", "--set", QUICK)
    assert job["stage"] == 2 and job["status"] in ("queued", "running") and job["overrides"] == {"outer_iters": 5}
    done = diet_json(served, "jobs", "wait", str(job["id"]))
    assert done["status"] == "succeeded" and done["dataset"] == "ml_100k@v2"
    assert "succeeded -> ml_100k@v2" in diet(served, "jobs", "show", str(job["id"])).stdout
    assert [j["stage"] for j in diet_json(served, "jobs", "ls", "--stream", "ml_100k")["items"]] == [2, 1]
    refused = diet(served, "jobs", "cancel", str(job["id"]), expect=1)
    assert "already succeeded" in refused.stderr

    assert [v["version"] for v in diet_json(served, "datasets", "ls", "--stream", "ml_100k")["items"]] == [
        "ml_100k@v2", "ml_100k@v1"]  # fmt: skip
    manifest = diet_json(served, "datasets", "show", "ml_100k@latest")
    assert manifest["version"] == "ml_100k@v2" and manifest["parent"] == "ml_100k@v1"

    # pull: every file checked; an interrupted download resumes, complete files stay
    pulled_dir = tmp_path / "pulled"
    pulled = diet(served, "datasets", "pull", "ml_100k@latest", "--to", str(pulled_dir))
    assert pulled.stdout.count("verified") == 3 and "ml_100k@v2 ->" in pulled.stdout
    synthetic = pulled_dir / "synthetic.parquet"
    whole = synthetic.read_bytes()
    synthetic.unlink()
    (pulled_dir / "synthetic.parquet.part").write_bytes(whole[: len(whole) // 2])
    resumed = {f["name"]: f for f in diet_json(served, "datasets", "pull", "ml_100k@v2", "--to", str(pulled_dir))["files"]}
    assert resumed["synthetic.parquet"]["resumed_from"] == len(whole) // 2 and synthetic.read_bytes() == whole
    assert resumed["reference.safetensors"]["resumed_from"] == resumed["reference.safetensors"]["bytes"]
    for artifact in manifest["artifacts"]:
        assert resumed[artifact["name"]]["sha256"] == artifact["sha256"]

    # the training side: a torch Dataset, then a candidate trained by the protocol
    torch.manual_seed(0)
    ds = load_dataset(pulled_dir)
    assert len(ds) == manifest["rows"] and ds.version == "ml_100k@v2" and ds.tasks == ["like", "love"]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True)))
    assert batch["embedding"].shape == (32, 11, 8) and batch["soft_labels"].shape == (32, 2)
    assert set(batch["stage"].tolist()) <= {1, 2}
    run = train_candidate("dcnv2", pulled_dir, ml100k_dir / "subsequent.parquet", ml100k_dir / "valid.parquet")
    assert len(run.valid_auc) == 8 and run.best_epoch is not None
    test = evaluate(run.model, TensorBlock.load(ml100k_dir / "test.parquet", ds.schema))
    assert 0.5 < test.mean_auc < 1.0, test

    # the report page, saved by the CLI and rendered by a browser
    report = tmp_path / "report.html"
    assert f"-> {report}" in diet(served, "datasets", "report", "ml_100k@latest", "--to", str(report)).stdout
    page = report.read_text()
    assert "DIET dataset ml_100k@v2" in page and "ml_100k@v1" in page and 'id="balance"' in page
    auth = {"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"}
    first_page = httpx.get(f"{served.url}/datasets/ml_100k@v1/report", headers=auth, timeout=60)
    assert first_page.status_code == 200 and first_page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in first_page.headers["content-security-policy"]  # the page loads nothing
    assert "ml_100k@v1" in first_page.text and "ml_100k@v2" not in first_page.text  # v1's lineage is itself
    image = screenshot(report.as_uri(), tmp_path / "report.png", tmp_path / "chromium")
    keep_copy(tmp_path / "report.png", "dataset-report.png")
    assert plot_pixels(image) > 2000, "the inline SVG plots did not render"


def test_exit_codes_scripts_can_trust(served, ml100k_dir, ml100k_schema):
    definition = {"name": "ml_two", "schema": ml100k_schema, "reference": LIGHT_REFERENCE}
    (served.work / "two.json").write_text(json.dumps(definition))
    diet(served, "streams", "create", str(served.work / "two.json"))
    b1, b2 = str(ml100k_dir / "b1.parquet"), str(ml100k_dir / "b2.parquet")
    diet(served, "blocks", "push", "ml_two", b1, b2)

    # 1: the service said no, with the problem's title and detail
    missing = diet(served, "datasets", "show", "ml_two@v99", expect=1)
    assert "Not Found: no dataset version ml_two@v99" in missing.stderr and missing.stdout == ""
    problem = json.loads(diet(served, "datasets", "show", "ml_two@v99", "--json", expect=1).stderr)
    assert problem["status"] == 404 and problem["title"] == "Not Found"
    assert "Unauthorized" in diet(served, "streams", "ls", env={"DIET_TOKEN": "wrong"}, expect=1).stderr
    assert "--token" in diet(served, "streams", "ls", env={"DIET_TOKEN": ""}, expect=1).stderr
    assert "no stream named 'nope'" in diet(served, "distill", "nope", "--stage", "1", expect=1).stderr
    # 2: usage
    diet(served, "blocks", "push", "ml_two", b1, b2, "--stage", "2", expect=2)
    diet(served, "distill", "ml_two", "--stage", "1", "--set", "no-equals-sign", expect=2)
    # 3: nobody answers
    nobody = {"DIET_URL": f"http://127.0.0.1:{free_port()}", "DIET_RETRIES": "1"}
    unreachable = diet(served, "jobs", "ls", env=nobody, expect=3)
    assert "cannot reach the DIET service" in unreachable.stderr
    # 4: a job waited for that does not succeed: stage 2, queued behind a slow stage 1 (300 outer iterations),
    # is still queued at --timeout 0, then cancelled
    first = diet_json(served, "distill", "ml_two", "--stage", "1")
    second = diet_json(served, "distill", "ml_two", "--stage", "2", "--set", QUICK)
    assert second["waits_for"] == first["id"]
    still = diet(served, "jobs", "wait", str(second["id"]), "--timeout", "0", "--json", expect=4)
    assert json.loads(still.stdout)["status"] == "queued" and "still queued" in still.stderr
    assert "cancelled" in diet(served, "jobs", "cancel", str(second["id"])).stdout
    ended = diet(served, "jobs", "wait", str(second["id"]), expect=4)
    assert "did not succeed: cancelled" in ended.stderr
    assert "cancelled" in diet(served, "jobs", "cancel", str(first["id"])).stdout  # the worker stops it


def test_export_webhooks_and_audit_commands(served, ml100k_dir, tmp_path):
    """After the first test: ml_100k@v1 and @v2 exist."""
    datasets = pytest.importorskip("datasets")
    exported = diet_json(served, "datasets", "export", "ml_100k@v2", "--format", "hf", "--to", str(tmp_path / "hf"))
    assert exported["version"] == "ml_100k@v2" and exported["format"] == "hf"
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "hf"), split="train")
    assert len(loaded) == exported["rows"] == diet_json(served, "datasets", "show", "ml_100k@v2")["rows"]
    assert {"stage", "emb_user_id", "soft_like", "logit_love"} <= set(loaded.column_names)
    assert "license: \"unknown\"" in (tmp_path / "hf" / "README.md").read_text()  # the stream names no licence
    flat = diet(served, "datasets", "export", "ml_100k@v1", "--format", "parquet", "--to", str(tmp_path / "flat"))
    assert "ml_100k-v1.parquet" in flat.stdout and (tmp_path / "flat" / "ml_100k-v1.parquet").is_file()

    env = {"DIET_WEBHOOK_SECRET": "cli-secret-0123456789"}
    hook = json.loads(diet(served, "webhooks", "add", "ml_100k", "--to", "http://127.0.0.1:9/h", "--event", "audit.alarm",
                           "--event", "job.finished", "--json", env=env).stdout)  # fmt: skip
    assert hook["events"] == ["audit.alarm", "job.finished"]
    assert "http://127.0.0.1:9/h" in diet(served, "webhooks", "ls", "--stream", "ml_100k").stdout
    assert diet_json(served, "webhooks", "deliveries", str(hook["id"]))["total"] == 0
    assert "deleted" in diet(served, "webhooks", "rm", str(hook["id"])).stdout
    assert "no webhook" in diet(served, "webhooks", "show", str(hook["id"]), expect=1).stderr

    refused = diet(served, "audit", "ml_100k@v1", "--model", "dcn", "--model", "magic", expect=1)
    assert "unknown models" in refused.stderr
    missing = diet(served, "audit", "ml_100k@v1", "--model", "dcn", "--model", "finalnet", expect=1)
    assert "stage 3 of 'ml_100k' (valid) has no block" in missing.stderr
    diet(served, "blocks", "push", "ml_100k", str(ml100k_dir / "b3.parquet"), str(ml100k_dir / "subsequent.parquet"))
    queued = diet(served, "audit", "ml_100k@v1", "--model", "dcn", "--model", "finalnet", "--set", "distilled_epochs=1")
    assert "of ml_100k@v1" in queued.stdout and "blocks: subsequent 2, valid 3, test 4" in queued.stdout
    [listed] = diet_json(served, "audits", "ls", "--version", "ml_100k@v1")["items"]
    assert listed["request"]["candidate"] == {"distilled_epochs": 1} and listed["request"]["models"] == ["dcn", "finalnet"]
    assert f"audit {listed['id']} of ml_100k@v1" in diet(served, "audits", "show", str(listed["id"])).stdout
