"""Load on one API process: many clients fetching manifests and artifacts, and one large streamed upload.

    python benchmarks/load.py [--quick] [--clients 200] [--seconds 60] [--block-mb 1024] [--out load.json]

It starts a real `uvicorn` process of the service on 127.0.0.1 (SQLite, local blobs, under a
temporary folder), prepares what it serves itself (a synthetic stream, a small block, and one
tiny distillation run in this process by the worker's own code), then measures:

* serve: `--clients` concurrent httpx clients, each fetching the newest manifest and then one of
  its artifacts, in a loop, for `--seconds`: requests, errors, p50/p99 latency per kind, bytes
  downloaded per second;
* ingest: a `--block-mb` Parquet block of generated rows, uploaded as a stream; its rate set
  against a plain write of the same bytes to the same disk. The upload is timed twice: new (the
  API streams, hashes and validates the whole file) and again (the same bytes: streamed and hashed,
  then recognised);

with the API process's RSS sampled throughout. It prints a table and writes every figure as
JSON (`--out`). Timings are reported, never asserted; `--quick` (50 clients x 5 s, a 50 MB block)
is what the test suite runs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

HOST = "127.0.0.1"
MB = 1_000_000
CHUNK = 1 << 20
STREAM = "load"
SCHEMA = {
    "name": STREAM,
    "fields": [{"name": "user", "buckets": 200_000}, {"name": "item", "buckets": 200_000},
               {"name": "category", "buckets": 1_000}],
    "numeric": [{"name": "price"}],
    "labels": ["click"],
    "timestamp": "ts",
}  # fmt: skip
# A small reference model and a two-iteration bi-level loop: the served version takes seconds to make.
REFERENCE = {"arch": {"embedding_dim": 16, "hidden": [32], "expert_dim": 16}, "train": {"batch_size": 1024}}
DISTILL = {"outer_iters": 2, "ratio": 0.05}


@dataclass
class Options:
    clients: int
    seconds: float
    block_mb: int
    out: Path
    work_dir: Path | None
    quick: bool


# --------------------------------------------------------------------------- data


def synthetic_rows(rows: int, rng: np.random.Generator, start_ts: int = 1_700_000_000) -> pa.Table:
    """A click log: two large id spaces, a small category, a price, a click label, rising timestamps."""
    return pa.table({
        "user": pa.array(rng.integers(0, 5_000_000, rows)),
        "item": pa.array(rng.integers(0, 1_000_000, rows)),
        "category": pa.array(rng.integers(0, 300, rows).astype(str)),
        "price": pa.array(rng.gamma(2.0, 10.0, rows).astype(np.float32)),
        "click": pa.array((rng.random(rows) < 0.2).astype(np.int8)),
        "ts": pa.array(start_ts + np.arange(rows, dtype=np.int64) // 10),
    })  # fmt: skip


def write_block(path: Path, target_bytes: int, seed: int = 0) -> int:
    """Write row groups of generated rows until the file reaches target_bytes; returns the row count."""
    rng = np.random.default_rng(seed)
    rows = 0
    group = 1 << 20
    with pq.ParquetWriter(path, synthetic_rows(1, rng).schema) as writer:
        while True:
            writer.write_table(synthetic_rows(group, rng, 1_700_000_000 + rows // 10))
            rows += group
            if path.stat().st_size >= target_bytes * 0.97:  # the footer still to come is small
                return rows


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK):
            yield chunk


def disk_write(src: Path, dest: Path, fsync: bool) -> float:
    """Seconds to write src's bytes to dest in 1 MiB writes (the page cache only, or through to the disk)."""
    started = time.perf_counter()
    with open(dest, "wb") as out:
        for chunk in file_chunks(src):
            out.write(chunk)
        if fsync:
            out.flush()
            os.fsync(out.fileno())
    elapsed = time.perf_counter() - started
    dest.unlink()
    return elapsed


# --------------------------------------------------------------------------- the API process


class RssSampler:
    """Samples a process's resident memory (Linux /proc) every `every_s`, labelled by the current phase."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self.pid = pid
        self.every_s = every_s
        self.phase = "start"
        self.samples: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.phase, self.rss()))
            except (FileNotFoundError, ProcessLookupError):
                return
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def mark(self, phase: str) -> None:
        self.samples.append((time.monotonic(), phase, self.rss()))
        self.phase = phase

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for phase in dict.fromkeys(p for _, p, _ in self.samples):
            values = [r for _, p, r in self.samples if p == phase]
            out[f"{phase}_first_mb"] = round(values[0] / MB, 1)
            out[f"{phase}_peak_mb"] = round(max(values) / MB, 1)
        out["peak_mb"] = round(max(r for _, _, r in self.samples) / MB, 1)
        return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_api(data_dir: Path, token: str, max_upload: int, log: Path) -> tuple[subprocess.Popen, str]:
    from service.registry import migrate
    from service.settings import Settings

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DIET_DATA_DIR": str(data_dir),
        "DIET_BOOTSTRAP_TOKEN": token,
        "DIET_MAX_UPLOAD_BYTES": str(max_upload),
        "DIET_WORKER_DEVICE": "cpu",
        "DIET_LOG_LEVEL": "WARNING",  # no log line per request: the measure is the API, not its logging
    }
    migrate.upgrade(Settings(data_dir=data_dir).database_url)  # as `diet serve` does before serving
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", "service.app:main", "--host", HOST, "--port", str(port),
               "--http", "service.http_protocol:HttpProtocol", "--no-access-log", "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base_url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return process, base_url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the API did not come up:\n{log.read_text()[-4000:]}")


def prepare_version(base_url: str, token: str, data_dir: Path, scratch: Path) -> dict[str, Any]:
    """Stream, one small block, and one tiny distillation run here by the worker's code: the served version."""
    from service.registry.db import Database
    from service.settings import Settings
    from service.storage import Storage
    from worker.tasks import Runtime, run_job

    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as c:
        c.post("/streams", json={"name": STREAM, "schema": SCHEMA, "reference": REFERENCE}).raise_for_status()
        block = scratch / "small.parquet"
        pq.write_table(synthetic_rows(20_000, np.random.default_rng(1)), block)
        c.post("/blocks", params={"stream": STREAM}, content=block.read_bytes(),
               headers={"Content-Type": "application/vnd.apache.parquet"}).raise_for_status()  # fmt: skip
        job = c.post("/jobs/distill", json={"stream": STREAM, "stage": 1, "overrides": DISTILL}).json()
        settings = Settings(data_dir=data_dir, worker_device="cpu")
        runtime = Runtime(settings, Database(settings.database_url), Storage(settings.storage_url))
        run_job(runtime, job["id"], send=lambda _: None)
        runtime.db.dispose()
        done = c.get(f"/jobs/{job['id']}").json()
        if done["status"] != "succeeded":
            raise RuntimeError(f"the preparing distillation did not succeed: {done}")
        return c.get(f"/datasets/{STREAM}@latest").json()


# --------------------------------------------------------------------------- serving load


@dataclass
class ServeStats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"manifest": [], "artifact": []})
    downloaded: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(what)


async def _client_loop(
    c: httpx.AsyncClient, index: int, manifest_url: str, sizes: dict[str, int], stop_at: float, stats: ServeStats
) -> None:
    names = sorted(sizes)
    turn = index
    while time.monotonic() < stop_at:
        started = time.perf_counter()
        try:
            response = await c.get(manifest_url)
            if response.status_code != 200:
                stats.error(f"manifest: {response.status_code} {response.text[:200]}")
                continue
            artifacts = {a["name"]: a["url"] for a in response.json()["artifacts"]}
            stats.latencies["manifest"].append(time.perf_counter() - started)
            name = names[turn % len(names)]
            turn += 1
            started = time.perf_counter()
            received = 0
            async with c.stream("GET", artifacts[name]) as download:
                if download.status_code != 200:
                    stats.error(f"{name}: {download.status_code}")
                    continue
                async for chunk in download.aiter_raw():
                    received += len(chunk)
            if received != sizes[name]:
                stats.error(f"{name}: {received} bytes, expected {sizes[name]}")
                continue
            stats.latencies["artifact"].append(time.perf_counter() - started)
            stats.downloaded += received
        except httpx.HTTPError as exc:
            stats.error(f"{type(exc).__name__}: {exc}")


async def serve_load(base_url: str, token: str, clients: int, seconds: float, version: dict[str, Any]) -> dict:
    stats = ServeStats()
    sizes = {a["name"]: a["bytes"] for a in version["artifacts"]}
    # An idle connection is dropped by the client (2 s) before uvicorn closes it (5 s): otherwise a request
    # sent just as the server closes it fails ("disconnected without sending a response"), a client race.
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=2.0)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=60) as c:
        started = time.monotonic()
        stop_at = started + seconds
        await asyncio.gather(
            *(_client_loop(c, i, f"/datasets/{STREAM}@latest", sizes, stop_at, stats) for i in range(clients))
        )
        elapsed = time.monotonic() - started
    requests = sum(len(v) for v in stats.latencies.values()) + stats.errors
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": requests,
        "requests_per_s": round(requests / elapsed, 1),
        "errors": stats.errors,
        "error_samples": stats.error_samples,
        "latency_ms": {kind: _percentiles(values) for kind, values in stats.latencies.items()},
        "artifact_bytes": sizes,
        "downloaded_bytes": stats.downloaded,
        "download_mb_per_s": round(stats.downloaded / MB / elapsed, 1),
    }


def _percentiles(seconds: list[float]) -> dict[str, float | int]:
    if len(seconds) < 2:
        return {"count": len(seconds), "p50": float("nan"), "p99": float("nan")}
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return {"count": len(seconds), "p50": round(cuts[49] * 1000, 2), "p99": round(cuts[98] * 1000, 2)}


# --------------------------------------------------------------------------- ingest


def ingest(base_url: str, token: str, block: Path, rows: int, sampler: RssSampler) -> dict[str, Any]:
    size = block.stat().st_size
    sha256 = hashlib.sha256()
    for chunk in file_chunks(block):
        sha256.update(chunk)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/vnd.apache.parquet"}
    timings: dict[str, float] = {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=3600) as c:
        for attempt, expected in (("new", 201), ("again", 200)):
            sampler.mark(f"ingest_{attempt}")
            started = time.perf_counter()
            response = c.post("/blocks", params={"stream": STREAM}, content=file_chunks(block),
                              headers={"Content-Length": str(size)})  # fmt: skip
            timings[attempt] = time.perf_counter() - started
            if response.status_code != expected or response.json()["sha256"] != sha256.hexdigest():
                raise RuntimeError(f"upload {attempt}: {response.status_code} {response.text[:500]}")
    sampler.mark("after_ingest")
    write_s = disk_write(block, block.with_suffix(".copy"), fsync=False)
    write_fsync_s = disk_write(block, block.with_suffix(".copy"), fsync=True)
    return {
        "block_bytes": size,
        "rows": rows,
        "upload_s": round(timings["new"], 2),
        "upload_mb_per_s": round(size / MB / timings["new"], 1),
        "upload_again_s": round(timings["again"], 2),
        "upload_again_mb_per_s": round(size / MB / timings["again"], 1),
        "disk_write_s": round(write_s, 2),
        "disk_write_mb_per_s": round(size / MB / write_s, 1),
        "disk_write_fsync_s": round(write_fsync_s, 2),
        "disk_write_fsync_mb_per_s": round(size / MB / write_fsync_s, 1),
    }


# --------------------------------------------------------------------------- the run


def run(options: Options) -> dict[str, Any]:
    assert ipaddress.ip_address(HOST).is_loopback  # the benchmark never listens beyond this machine
    token = "load-" + secrets.token_hex(16)
    load_at_start = os.getloadavg()[0]  # other work on the machine skews every figure: say how much there was
    with tempfile.TemporaryDirectory(prefix="diet-load-", dir=options.work_dir) as tmp:
        work = Path(tmp)
        block = work / "block.parquet"
        made = time.perf_counter()
        rows = write_block(block, options.block_mb * MB)
        generate_s = time.perf_counter() - made
        process, base_url = start_api(work / "data", token, 2 * block.stat().st_size + 100 * MB, work / "api.log")
        try:
            with RssSampler(process.pid) as sampler:
                sampler.mark("prepare")
                version = prepare_version(base_url, token, work / "data", work)
                sampler.mark("serve")
                serve = asyncio.run(serve_load(base_url, token, options.clients, options.seconds, version))
                sampler.mark("ingest")
                ingested = ingest(base_url, token, block, rows, sampler)
                rss = sampler.summary()
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return {
        "mode": "quick" if options.quick else "full",
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_start": round(load_at_start, 2),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(), "platform": platform.platform()},  # fmt: skip
        "api": {"server": "uvicorn, one process", "database": "sqlite", "storage": "local disk", "url": base_url},
        "version": version["version"],
        "serve": serve,
        "ingest": {**ingested, "generate_s": round(generate_s, 2)},
        "rss": rss,
    }


def print_table(result: dict[str, Any]) -> None:
    serve, ing, rss = result["serve"], result["ingest"], result["rss"]
    lat = serve["latency_ms"]
    rows = [
        ("serve", f"{serve['clients']} clients x {serve['seconds']} s, {serve['requests']} requests, "
                  f"{serve['errors']} errors, {serve['requests_per_s']} req/s"),
        ("  manifest latency", f"p50 {lat['manifest']['p50']} ms, p99 {lat['manifest']['p99']} ms "
                               f"({lat['manifest']['count']})"),
        ("  artifact latency", f"p50 {lat['artifact']['p50']} ms, p99 {lat['artifact']['p99']} ms "
                               f"({lat['artifact']['count']}; sizes {serve['artifact_bytes']})"),
        ("  downloads", f"{serve['downloaded_bytes'] / MB:.0f} MB, {serve['download_mb_per_s']} MB/s"),
        ("ingest", f"{ing['block_bytes'] / MB:.0f} MB block, {ing['rows']} rows"),
        ("  upload, new", f"{ing['upload_s']} s, {ing['upload_mb_per_s']} MB/s (streamed, hashed, validated)"),
        ("  upload, again", f"{ing['upload_again_s']} s, {ing['upload_again_mb_per_s']} MB/s (streamed, hashed)"),
        ("  plain disk write", f"{ing['disk_write_s']} s, {ing['disk_write_mb_per_s']} MB/s; with fsync "
                               f"{ing['disk_write_fsync_s']} s, {ing['disk_write_fsync_mb_per_s']} MB/s"),
        ("API RSS", f"start {rss['prepare_first_mb']} MB, serving peak {rss['serve_peak_mb']} MB, "
                    f"ingest peak {max(rss['ingest_new_peak_mb'], rss['ingest_again_peak_mb'])} MB, "
                    f"after {rss['after_ingest_first_mb']} MB"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    machine = result["machine"]
    print(f"load benchmark ({result['mode']}, {machine['cpus']} CPUs, load average {machine['load_avg_1m_at_start']} "
          f"at start, {machine['load_avg_1m_at_end']} at end)")
    for name, text in rows:
        print(f"{name:<{width}}  {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 clients x 5 s and a 50 MB block (for tests)")
    parser.add_argument("--clients", type=int, help="concurrent clients [200; quick 50]")
    parser.add_argument("--seconds", type=float, help="how long the clients fetch [60; quick 5]")
    parser.add_argument("--block-mb", type=int, help="size of the uploaded block in MB [1000; quick 50]")
    parser.add_argument("--out", type=Path, default=Path("load-out/load.json"), help="the JSON [load-out/load.json]")
    parser.add_argument("--work-dir", type=Path, help="where the temporary service and block live [system temp]")
    args = parser.parse_args(argv)
    quick = args.quick
    options = Options(
        clients=args.clients or (50 if quick else 200),
        seconds=args.seconds or (5.0 if quick else 60.0),
        block_mb=args.block_mb or (50 if quick else 1000),
        out=args.out,
        work_dir=args.work_dir,
        quick=quick,
    )
    result = run(options)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {options.out}")
    return 1 if result["serve"]["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
