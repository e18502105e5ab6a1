"""The CLI's own parts, without a service: job progress lines, --set parsing, definitions, the help text."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import typer
from rich.console import Console
from service_support import REPO
from typer.testing import CliRunner

from diet_client.cli.jobs import parse_overrides
from diet_client.cli.progress import JobView
from diet_client.cli.streams import read_definition
from diet_client.models import Job
from service.cli import app


def job(status: str, phase: str | None = None, step: int = 0, total: int = 1, **losses: float) -> Job:
    now = datetime.now(UTC)
    progress = {"phase": phase, "step": step, "total": total, "losses": losses} if phase else None
    return Job(id=7, stream="s", stage=2, status=status, overrides={}, config={}, progress=progress, error=None,
               attempts=1, waits_for=None, dataset=None, created_at=now, updated_at=now, started_at=None,
               finished_at=None)  # fmt: skip


def test_off_a_terminal_a_job_prints_a_line_per_phase_and_never_the_same_twice():
    out = io.StringIO()
    view = JobView(True, Console(file=out, width=200), line_every_s=0.0)
    states = [job("queued"), job("queued"), job("running", "reference", 1, 67, reference=1.3874),
              job("running", "reference", 1, 67, reference=1.3874), job("running", "optimise", 3, 20, outer=0.5),
              job("succeeded", "done", 1, 1)]  # fmt: skip
    with view:
        for state in states:
            view.update(state)
    assert out.getvalue().splitlines() == [
        "job 7 stage 2 · queued",
        "job 7 stage 2 · running · reference 1/67 · reference 1.3874",
        "job 7 stage 2 · running · optimise 3/20 · outer 0.5000",
        "job 7 stage 2 · succeeded",
    ]
    silent = io.StringIO()
    with JobView(False, Console(file=silent)) as quiet:
        quiet.update(states[2])
    assert silent.getvalue() == ""


def test_overrides_are_json_values_or_text():
    assert parse_overrides(["outer_iters=5", "ratio=0.01", "memory_fusion=false", "influence_params=head"]) == {
        "outer_iters": 5, "ratio": 0.01, "memory_fusion": False, "influence_params": "head"}  # fmt: skip
    with pytest.raises(typer.BadParameter):
        parse_overrides(["outer_iters"])


def test_a_definition_file_or_a_bare_schema(tmp_path):
    schema = {"name": "s", "fields": [{"name": "u"}], "labels": ["y"], "timestamp": "t"}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    (tmp_path / "def.json").write_text(json.dumps({"name": "other", "schema": schema, "distill": {"ratio": 0.01}}))
    assert read_definition(tmp_path / "schema.json") == {"schema": schema}
    assert read_definition(tmp_path / "def.json")["distill"] == {"ratio": 0.01}
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(typer.BadParameter):
        read_definition(tmp_path / "bad.json")


def test_help_lists_the_service_commands_and_the_exit_codes():
    shown = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    for command in ("streams", "blocks", "distill", "jobs", "datasets", "status", "serve", "tokens", "bench"):
        assert command in shown.output
    assert "Exit codes: 0 ok; 1 the service refused" in shown.output and "DIET_TOKEN" in shown.output


def test_tokens_speak_json_for_scripts(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "DIET_DATA_DIR": str(tmp_path)}

    def tokens(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "service.cli", "tokens", *args, "--json"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    created = json.loads(tokens("create", "--scope", "read", "--scope", "ingest", "--name", "etl"))
    assert created["name"] == "etl" and created["scopes"] == ["ingest", "read"] and created["token"].startswith("diet_")
    listed = json.loads(tokens("list"))
    assert [(t["id"], t["name"], t["revoked_at"]) for t in listed] == [(created["id"], "etl", None)]
    assert created["token"] not in json.dumps(listed)
