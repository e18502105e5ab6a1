"""`diet serve --workers 2`: two API processes on one port and one embedded registry (SQLite in WAL mode,
migrated once before they start). Concurrent writes through both all land; one process killed, the other
answers and the supervisor starts another."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from service_support import BOOTSTRAP_TOKEN, PARQUET, Process, free_port

pytestmark = [pytest.mark.e2e]

DIET = [sys.executable, "-m", "service.cli"]
SCHEMA = {"fields": [{"name": "user", "buckets": 100}], "labels": ["like"], "timestamp": "ts"}


def _block(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    table = pa.table({"user": pa.array(rng.integers(0, 50, 200)), "like": pa.array(rng.integers(0, 2, 200), pa.int8()),
                      "ts": pa.array(np.arange(200, dtype=np.int64) + 1_700_000_000)})  # fmt: skip
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _api_processes(serve: Process) -> list[int]:
    """The supervisor's children that run the app (multiprocessing's spawn), not its resource tracker."""
    found = []
    for pid in serve.children():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            found.append(pid)
    return found


def _wait_for(what, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := what():
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s")


def test_two_api_processes_share_the_port_and_the_registry(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "diet-data"
    env = {"DIET_DATA_DIR": str(data_dir), "DIET_BOOTSTRAP_TOKEN": BOOTSTRAP_TOKEN}
    serve = Process("diet-serve", [*DIET, "serve", "--workers", "2", "--no-worker", "--port", str(port)], env, tmp_path)
    try:
        serve.wait_healthy(url)
        assert len(_wait_for(lambda: len(_api_processes(serve)) == 2 and _api_processes(serve))) == 2
        with sqlite3.connect(data_dir / "registry.sqlite3") as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # set by the one migration

        def write(i: int) -> tuple[int, int]:
            # A client (a connection) of its own each: the kernel hands connections to either process.
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"}, timeout=60) as c:
                made = c.post("/streams", json={"name": f"s{i}", "schema": {"name": f"s{i}", **SCHEMA}})
                pushed = c.post("/blocks", params={"stream": f"s{i}"}, content=_block(i), headers=PARQUET)
                return made.status_code, pushed.status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(write, range(16))) == [(201, 201)] * 16
        auth = {"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"}
        listed = httpx.get(f"{url}/streams", headers=auth, timeout=30).json()
        assert sorted(s["name"] for s in listed) == sorted(f"s{i}" for i in range(16))

        first, second = _api_processes(serve)
        os.kill(first, signal.SIGKILL)
        for _ in range(5):  # fresh connections: all answered, by the survivor or the replacement
            assert httpx.get(f"{url}/blocks", headers=auth, timeout=30).json()["total"] == 16
        _wait_for(lambda: len(_api_processes(serve)) == 2 and first not in _api_processes(serve))
        assert second in _api_processes(serve)
    finally:
        serve.clean_up()
