"""Load on the API: many clients fetching manifests and artifacts, for 1 and N API processes, set against
plain static-file readers of the same files; and one large streamed upload set against a plain disk write.

    python benchmarks/load.py [--quick] [--clients 200] [--seconds 60] [--block-mb 1100] [--processes 2]
                              [--storage-url URL [--storage-options JSON]] [--out load.json]

It starts the service as `diet serve --workers N --no-worker` on 127.0.0.1 (SQLite, local blobs, under a
temporary folder), prepares what it serves itself (a synthetic stream, a small block, and one tiny
distillation run in this process by the worker's own code), then measures:

* serve, with 1 and with `--processes` API processes: `--clients` concurrent httpx clients for
  `--seconds`, half fetching the newest manifest in a loop, half its artifacts in turn (streamed to the
  end, length checked): requests, errors, p50/p99 latency per kind, bytes per second;
* static: as many plain readers as there were artifact clients, fetching the same files from a minimal
  static-file server (asyncio + sendfile(2), a process of its own): what the machine can move;
* ingest: a `--block-mb` Parquet block of generated rows, uploaded as a stream to the 1-process API; its
  rate set against a plain write of the same bytes to the same disk. The upload is timed twice: new (the
  API streams, hashes and validates the whole file) and again (the same bytes: streamed and hashed, then
  recognised);
* `--storage-url` (an fsspec URL, e.g. `s3://bucket/prefix` of an S3-compatible server, with
  `--storage-options '{"endpoint_url": ...}'`): the serve and ingest rows again with blobs there
  (`storage_row`).

The API processes' RSS (all of them together) and CPU, and the clients' CPU, are sampled throughout,
labelled by phase: on a small machine they say what saturates. Every phase has a deadline, so the run
stops by itself. It prints a table and writes every figure as JSON (`--out`). Timings are reported,
never asserted; `--quick` (50 clients x 5 s, a 50 MB block) is what the test suite runs.
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
    processes: int
    client_processes: int
    storage_urls: list[str]
    storage_options: dict[str, Any]
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


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            todo += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def _rss_and_cpu(pid: int) -> tuple[int, float]:
    """RSS in bytes and CPU seconds (user + system) of one process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return rss, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / os.sysconf("SC_CLK_TCK"), total / os.sysconf("SC_CLK_TCK")


class Sampler:
    """Samples the API's process tree (RSS summed over its processes, CPU seconds) every `every_s`, with this
    process's CPU (the clients) and the machine's, labelled by the current phase."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self.pid = pid
        self.every_s = every_s
        self.phase = "start"
        self.samples: list[tuple[float, str, int]] = []
        self.cpu: dict[str, dict[str, float]] = {}
        self._phase_started: tuple[float, float, float, float, float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def api(self) -> tuple[int, float, int]:
        """(RSS of every API process, their CPU seconds, how many there are)."""
        rss = cpu = 0.0
        alive = 0
        for pid in _tree(self.pid):
            try:
                r, c = _rss_and_cpu(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
            rss, cpu, alive = rss + r, cpu + c, alive + 1
        return int(rss), cpu, alive

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, _, alive = self.api()
            if not alive:
                return
            self.samples.append((time.monotonic(), self.phase, rss))
            self._stop.wait(self.every_s)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._close_phase()
        self._stop.set()
        self._thread.join()

    def _snapshot(self) -> tuple[float, float, float, float, float]:
        own = os.times()  # with the client processes of the phase, waited for before it ends
        busy, total = _machine_busy_s()
        clients = own.user + own.system + own.children_user + own.children_system
        return time.monotonic(), self.api()[1], clients, busy, total

    def _close_phase(self) -> None:
        if self._phase_started is None:
            return
        (t0, api0, own0, busy0, total0), (t1, api1, own1, busy1, total1) = self._phase_started, self._snapshot()
        wall = max(t1 - t0, 1e-9)
        self.cpu[self.phase] = {
            "wall_s": round(wall, 2),
            "api_cores": round((api1 - api0) / wall, 2),  # CPU seconds per second: 1.0 = one core kept busy
            "clients_cores": round((own1 - own0) / wall, 2),  # the client processes, this one and its sampler
            "machine_busy_pct": round(100 * (busy1 - busy0) / max(total1 - total0, 1e-9), 1),
        }

    def mark(self, phase: str) -> None:
        self._close_phase()
        self.samples.append((time.monotonic(), phase, self.api()[0]))
        self.phase = phase
        self._phase_started = self._snapshot()

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


def _wait_healthy(process: subprocess.Popen, base_url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the API did not come up:\n{log.read_text()[-4000:]}")


def start_api(
    data_dir: Path, token: str, max_upload: int, log: Path, processes: int = 1, storage: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """`diet serve --workers N --no-worker` (it migrates the registry once, then forks its API processes)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DIET_DATA_DIR": str(data_dir),
        "DIET_BOOTSTRAP_TOKEN": token,
        "DIET_MAX_UPLOAD_BYTES": str(max_upload),
        "DIET_WORKER_DEVICE": "cpu",
        "DIET_LOG_LEVEL": "WARNING",  # no log line per request: the measure is the API, not its logging
        **(storage or {}),
    }
    port = free_port()
    command = [sys.executable, "-m", "service.cli", "serve", "--host", HOST, "--port", str(port),
               "--workers", str(processes), "--no-worker"]  # fmt: skip
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    base_url = f"http://{HOST}:{port}"
    _wait_healthy(process, base_url, log)
    if processes > 1:  # /healthz answered by one of them; the others may still be importing
        deadline = time.monotonic() + 60
        while len(_tree(process.pid)) < processes + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2.0)
    return process, base_url


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def prepare_version(
    base_url: str, token: str, data_dir: Path, scratch: Path, storage: dict[str, str] | None = None
) -> dict[str, Any]:
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
        overrides: dict[str, Any] = {}
        if storage:
            overrides = {"storage_url": storage["DIET_STORAGE_URL"],
                         "storage_options": json.loads(storage.get("DIET_STORAGE_OPTIONS", "{}"))}  # fmt: skip
        settings = Settings(data_dir=data_dir, worker_device="cpu", **overrides)
        runtime = Runtime(settings, Database(settings.database_url), Storage(settings.storage_url, settings.storage_options))
        run_job(runtime, job["id"], send=lambda _: None)
        runtime.db.dispose()
        done = c.get(f"/jobs/{job['id']}").json()
        if done["status"] != "succeeded":
            raise RuntimeError(f"the preparing distillation did not succeed: {done}")
        return c.get(f"/datasets/{STREAM}@latest").json()


# --------------------------------------------------------------------------- serving load


@dataclass
class ServeStats:
    stop_at: float
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"manifest": [], "artifact": []})
    downloaded: int = 0  # bytes received before stop_at
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(what)


async def _manifest_loop(c: httpx.AsyncClient, url: str, stats: ServeStats) -> None:
    while time.monotonic() < stats.stop_at:
        started = time.perf_counter()
        try:
            response = await c.get(url)
            if response.status_code != 200 or not response.json()["artifacts"]:
                stats.error(f"manifest: {response.status_code} {response.text[:200]}")
                continue
            stats.latencies["manifest"].append(time.perf_counter() - started)
        except httpx.HTTPError as exc:
            stats.error(f"manifest: {type(exc).__name__}: {exc}")


async def _artifact_loop(c: httpx.AsyncClient, index: int, files: list[tuple[str, int]], stats: ServeStats) -> None:
    turn = index
    while time.monotonic() < stats.stop_at:
        url, size = files[turn % len(files)]
        turn += 1
        started = time.perf_counter()
        received = 0
        try:
            async with c.stream("GET", url) as download:
                if download.status_code != 200:
                    stats.error(f"{url}: {download.status_code}")
                    continue
                async for chunk in download.aiter_raw():
                    received += len(chunk)
                    if time.monotonic() <= stats.stop_at:
                        stats.downloaded += len(chunk)
            if received != size:
                stats.error(f"{url}: {received} bytes, expected {size}")
                continue
            stats.latencies["artifact"].append(time.perf_counter() - started)
        except httpx.HTTPError as exc:
            stats.error(f"{url}: {type(exc).__name__}: {exc}")


async def _client_share(spec: dict[str, Any]) -> dict[str, Any]:
    """One client process's share of a serve phase, from `spec`; its raw figures (merged by `serve_load`)."""
    manifest_clients, artifact_clients = spec["manifest_clients"], spec["artifact_clients"]
    clients = manifest_clients + artifact_clients
    start_in = spec["start_at"] - time.time()  # every client process starts at the same moment
    if start_in > 0:
        await asyncio.sleep(start_in)
    stats = ServeStats(stop_at=time.monotonic() + spec["seconds"])
    # An idle connection is dropped by the client (2 s) before uvicorn closes it (5 s): otherwise a request
    # sent just as the server closes it fails ("disconnected without sending a response"), a client race.
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=2.0)
    headers = {"Authorization": f"Bearer {spec['token']}"} if spec["token"] else {}
    files = [tuple(f) for f in spec["files"]]
    async with (
        httpx.AsyncClient(base_url=spec["base_url"], headers=headers, limits=limits, timeout=60) as c,
        httpx.AsyncClient(base_url=spec["files_url"], headers=headers, limits=limits, timeout=60) as files_c,
    ):
        tasks = [asyncio.ensure_future(_manifest_loop(c, spec["manifest_url"], stats)) for _ in range(manifest_clients)]
        tasks += [asyncio.ensure_future(_artifact_loop(files_c, spec["first_index"] + i, files, stats))
                  for i in range(artifact_clients)]  # fmt: skip
        _, cut = await asyncio.wait(tasks, timeout=spec["seconds"] + spec["grace"])
        for task in cut:
            task.cancel()
        await asyncio.gather(*cut, return_exceptions=True)
    return {"latencies": stats.latencies, "downloaded": stats.downloaded, "errors": stats.errors,
            "error_samples": stats.error_samples, "unfinished": len(cut)}  # fmt: skip


def client_share_process(spec_path: Path, out_path: Path) -> None:
    out_path.write_text(json.dumps(asyncio.run(_client_share(json.loads(spec_path.read_text())))))


def serve_load(
    base_url: str, token: str, clients: int, seconds: float, files: list[tuple[str, int]], manifest_url: str | None,
    work: Path, client_processes: int, files_url: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """`clients` clients for `seconds`, spread over `client_processes` processes (one Python process cannot
    drive hundreds of httpx clients without becoming what is measured): half fetch `manifest_url` in a loop
    (none when it is None), the rest the `files` in turn. Requests still running a grace period after the
    end are cut and counted as unfinished. The files come from `files_url` when given (a static server)."""
    manifest_clients = clients // 2 if manifest_url else 0
    grace = min(max(5.0, seconds / 2), 30.0)
    start_at = time.time() + 3.0 + client_processes  # time for the processes to import httpx
    shares, first = [], 0
    for i in range(client_processes):
        m = manifest_clients // client_processes + (i < manifest_clients % client_processes)
        a = (clients - manifest_clients) // client_processes + (i < (clients - manifest_clients) % client_processes)
        spec = {"base_url": base_url, "files_url": files_url or base_url, "token": token, "manifest_url": manifest_url, "files": files, "seconds": seconds,
                "grace": grace, "start_at": start_at, "manifest_clients": m, "artifact_clients": a, "first_index": first}
        first += a
        spec_path, out_path = work / f"clients-{i}.json", work / f"clients-{i}-out.json"
        spec_path.write_text(json.dumps(spec))
        out_path.unlink(missing_ok=True)
        command = [sys.executable, __file__, "--client-share", str(spec_path), str(out_path)]
        shares.append((subprocess.Popen(command, cwd=REPO), out_path))  # fmt: skip
    parts = []
    for process, out_path in shares:
        try:
            process.wait(start_at - time.time() + seconds + grace + 60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.returncode != 0 or not out_path.exists():
            raise RuntimeError(f"a client process failed ({process.returncode})")
        parts.append(json.loads(out_path.read_text()))
    latencies = {kind: [v for part in parts for v in part["latencies"][kind]] for kind in ("manifest", "artifact")}
    errors = sum(part["errors"] for part in parts)
    downloaded = sum(part["downloaded"] for part in parts)
    requests = sum(len(v) for v in latencies.values()) + errors
    return {
        "clients": clients,
        "client_processes": client_processes,
        "manifest_clients": manifest_clients,
        "artifact_clients": clients - manifest_clients,
        "seconds": seconds,
        "requests": requests,
        "requests_per_s": round(requests / seconds, 1),
        "errors": errors,
        "error_samples": [e for part in parts for e in part["error_samples"]][:10],
        "unfinished": sum(part["unfinished"] for part in parts),  # requests still running `grace` after the end
        "latency_ms": {kind: _percentiles(values) for kind, values in latencies.items() if values or manifest_url},
        "downloaded_bytes": downloaded,
        "download_mb_per_s": round(downloaded / MB / seconds, 1),
    }


def _percentiles(seconds: list[float]) -> dict[str, float | int]:
    if len(seconds) < 2:
        return {"count": len(seconds), "p50": float("nan"), "p99": float("nan")}
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return {"count": len(seconds), "p50": round(cuts[49] * 1000, 2), "p99": round(cuts[98] * 1000, 2)}


def artifact_files(version: dict[str, Any]) -> list[tuple[str, int]]:
    return [(a["url"], a["bytes"]) for a in version["artifacts"]]


# --------------------------------------------------------------------------- plain static-file readers


async def _static_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, files: dict[str, str]) -> None:
    loop = asyncio.get_running_loop()
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode().split("?", 1)[0]
            target = files.get(path)
            if target is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                continue
            with open(target, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                             b"content-length: %d\r\n\r\n" % size)  # fmt: skip
                await loop.sendfile(writer.transport, f, 0, size)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def serve_static(port: int, files_json: Path) -> None:
    """A minimal static-file server (keep-alive GETs, bodies by sendfile): the bar for the API's downloads."""
    files = json.loads(files_json.read_text())

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: _static_connection(r, w, files), HOST, port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _blob_paths(data_dir: Path, version: dict[str, Any]) -> dict[str, str]:
    """URL path -> file of each of the version's artifacts, read from the registry and the blob folder."""
    from service.registry import datasets, streams
    from service.registry.db import Database
    from service.settings import Settings
    from service.storage import Storage

    settings = Settings(data_dir=data_dir)
    storage, db = Storage(settings.storage_url), Database(settings.database_url)
    try:
        with db.read_session() as session:
            stream = streams.by_name(session, version["stream"])
            row = datasets.get(session, stream.id, version["number"])
            return {f"/datasets/{row.label}/files/{a['name']}": storage.path(a["key"]) for a in row.artifacts}
    finally:
        db.dispose()


def static_load(
    work: Path, data_dir: Path, version: dict[str, Any], options: Options, base_url: str, token: str
) -> dict[str, Any]:
    """The serve phase again with the artifact clients fetching the same files from `serve_static` instead (the
    manifest clients still ask the API): what plain readers get on this machine under the same client load."""
    files_json = work / "static-files.json"
    files_json.write_text(json.dumps(_blob_paths(data_dir, version)))
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve-static", str(port), str(files_json)], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the static-file server did not start") from None
                time.sleep(0.1)
        with Sampler(process.pid) as sampler:
            sampler.mark("static")
            result = serve_load(base_url, token, options.clients, options.seconds, artifact_files(version),
                                f"/datasets/{STREAM}@latest", work, options.client_processes,
                                files_url=f"http://{HOST}:{port}")  # fmt: skip
        return {**result, "cpu": sampler.cpu["static"]}
    finally:
        stop(process)


# --------------------------------------------------------------------------- ingest


def ingest(base_url: str, token: str, block: Path, rows: int, sampler: Sampler) -> dict[str, Any]:
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
    sampler.mark("plain_write")
    write_s = disk_write(block, block.with_suffix(".copy"), fsync=False)
    write_fsync_s = disk_write(block, block.with_suffix(".copy"), fsync=True)
    sampler.mark("after_ingest")
    upload_rate = size / MB / timings["new"]
    write_rate = size / MB / write_s
    return {
        "block_bytes": size,
        "rows": rows,
        "upload_s": round(timings["new"], 2),
        "upload_mb_per_s": round(upload_rate, 1),
        "upload_again_s": round(timings["again"], 2),
        "upload_again_mb_per_s": round(size / MB / timings["again"], 1),
        "disk_write_s": round(write_s, 2),
        "disk_write_mb_per_s": round(write_rate, 1),
        "disk_write_fsync_s": round(write_fsync_s, 2),
        "disk_write_fsync_mb_per_s": round(size / MB / write_fsync_s, 1),
        "upload_vs_plain_write_pct": round(100 * upload_rate / write_rate, 1),
    }


# --------------------------------------------------------------------------- the run


def storage_row(
    options: Options, work: Path, token: str, block: Path, rows: int, storage_url: str | None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Path, dict[str, Any]]:  # fmt: skip
    """Serve and ingest on a 1-process API whose blobs live at `storage_url` (None: the data dir's folder).

    The row of the table for one storage; (row, data dir, served version)."""
    storage = None
    if storage_url is not None:
        storage = {"DIET_STORAGE_URL": storage_url, "DIET_STORAGE_OPTIONS": json.dumps(storage_options or {})}
    label = "local" if storage_url is None else storage_url.split("://", 1)[0]
    data_dir = work / f"data-{label}"
    process, base_url = start_api(data_dir, token, 2 * block.stat().st_size + 100 * MB, work / f"api-{label}.log",
                                  storage=storage)  # fmt: skip
    try:
        with Sampler(process.pid) as sampler:
            sampler.mark("prepare")
            version = prepare_version(base_url, token, data_dir, work, storage)
            sampler.mark("serve")
            served = serve_load(base_url, token, options.clients, options.seconds, artifact_files(version),
                                f"/datasets/{STREAM}@latest", work, options.client_processes)  # fmt: skip
            sampler.mark("ingest")
            ingested = ingest(base_url, token, block, rows, sampler)
        static = static_load(work, data_dir, version, options, base_url, token) if storage_url is None else None
    finally:
        stop(process)
    row = {"storage": storage_url or "local disk", "api_processes": 1, "serve": {**served, "cpu": sampler.cpu["serve"]},
           "ingest": {**ingested, "cpu": {k: sampler.cpu[k] for k in ("ingest_new", "ingest_again", "plain_write")}},
           "rss": sampler.summary()}  # fmt: skip
    if static is not None:
        row["static"] = static
    return row, data_dir, version


def processes_row(options: Options, work: Path, token: str, data_dir: Path, version: dict[str, Any]) -> dict[str, Any]:
    """Serve again from the same registry and blobs with `options.processes` API processes."""
    process, base_url = start_api(data_dir, token, MB, work / "api-n.log", processes=options.processes)
    try:
        with Sampler(process.pid) as sampler:
            sampler.mark("serve")
            served = serve_load(base_url, token, options.clients, options.seconds, artifact_files(version),
                                f"/datasets/{STREAM}@latest", work, options.client_processes)  # fmt: skip
    finally:
        stop(process)
    return {"storage": "local disk", "api_processes": options.processes, "serve": {**served, "cpu": sampler.cpu["serve"]},
            "rss": sampler.summary()}  # fmt: skip


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
        local, data_dir, version = storage_row(options, work, token, block, rows, None)
        local["ingest"]["generate_s"] = round(generate_s, 2)
        several = processes_row(options, work, token, data_dir, version)
        static = local.pop("static")
        others = [storage_row(options, work, token, block, rows, url, options.storage_options)[0]
                  for url in options.storage_urls]  # fmt: skip
    artifact_rate = lambda row: row["serve"]["download_mb_per_s"]  # noqa: E731
    return {
        "mode": "quick" if options.quick else "full",
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_start": round(load_at_start, 2),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(), "platform": platform.platform(),
                    "note": "clients, API and static server share this machine's cores"},  # fmt: skip
        "api": {"server": "diet serve --workers N (uvicorn, asyncio loop)", "database": "sqlite"},
        "version": version["version"],
        "artifact_bytes": {a["name"]: a["bytes"] for a in version["artifacts"]},
        "rows": [local, several, *others],
        "static": static,
        "artifacts_vs_static_pct": {
            f"{row['api_processes']}_process": round(100 * artifact_rate(row) / max(static["download_mb_per_s"], 1e-9), 1)
            for row in (local, several)
        },
    }


def print_table(result: dict[str, Any]) -> None:
    machine = result["machine"]
    print(f"load benchmark ({result['mode']}, {machine['cpus']} CPUs shared by clients and servers, load average "
          f"{machine['load_avg_1m_at_start']} at start, {machine['load_avg_1m_at_end']} at end); artifacts "
          f"{result['artifact_bytes']}")  # fmt: skip
    lines: list[tuple[str, str]] = []

    def serve_lines(name: str, serve: dict[str, Any], rss: str) -> None:
        lat = serve["latency_ms"]
        cpu = serve["cpu"]
        lines.append((name, f"{serve['clients']} clients in {serve['client_processes']} processes x {serve['seconds']} s, {serve['requests']} requests, "
                            f"{serve['errors']} errors, {serve['unfinished']} unfinished, {serve['requests_per_s']} req/s"))
        for kind, figures in lat.items():
            lines.append((f"  {kind}", f"p50 {figures['p50']} ms, p99 {figures['p99']} ms ({figures['count']})"))
        lines.append(("  downloads", f"{serve['downloaded_bytes'] / MB:.0f} MB, {serve['download_mb_per_s']} MB/s"))
        lines.append(("  CPU", f"server {cpu['api_cores']} cores, clients {cpu['clients_cores']} cores, "
                               f"machine {cpu['machine_busy_pct']} % busy{rss}"))  # fmt: skip

    for row in result["rows"]:
        rss = row["rss"]
        serve_lines(f"serve: {row['api_processes']} API process(es), {row['storage']}", row["serve"],
                    f"; API RSS {rss['serve_first_mb']} -> peak {rss['serve_peak_mb']} MB")  # fmt: skip
        if "ingest" in row:
            ing = row["ingest"]
            lines += [
                (f"ingest: {row['storage']}", f"{ing['block_bytes'] / MB:.0f} MB block, {ing['rows']} rows"),
                ("  upload, new", f"{ing['upload_s']} s, {ing['upload_mb_per_s']} MB/s (streamed, hashed, validated)"
                                  f" = {ing['upload_vs_plain_write_pct']} % of the plain write"),
                ("  upload, again", f"{ing['upload_again_s']} s, {ing['upload_again_mb_per_s']} MB/s (streamed, hashed)"),
                ("  plain disk write", f"{ing['disk_write_s']} s, {ing['disk_write_mb_per_s']} MB/s; with fsync "
                                       f"{ing['disk_write_fsync_s']} s, {ing['disk_write_fsync_mb_per_s']} MB/s"),
                ("  CPU, upload new", f"API {ing['cpu']['ingest_new']['api_cores']} cores, client "
                                      f"{ing['cpu']['ingest_new']['clients_cores']} cores"),
                ("  API RSS", f"before {rss['ingest_new_first_mb']} MB, peak {rss['ingest_new_peak_mb']} MB (new), "
                              f"{rss['ingest_again_peak_mb']} MB (again)"),
            ]  # fmt: skip
    serve_lines("static: artifacts from a plain sendfile server, manifests from the API", result["static"], "")
    lines.append(("artifacts vs static", ", ".join(f"{k.replace('_', ' ')}: {v} %"
                                                   for k, v in result["artifacts_vs_static_pct"].items())))  # fmt: skip
    width = max(len(name) for name, _ in lines)
    for name, text in lines:
        print(f"{name:<{width}}  {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 clients x 5 s and a 50 MB block (for tests)")
    parser.add_argument("--clients", type=int, help="concurrent clients [200; quick 50]")
    parser.add_argument("--seconds", type=float, help="how long the clients fetch, per serve row [60; quick 5]")
    parser.add_argument("--block-mb", type=int, help="size of the uploaded block in MB [1100; quick 50]")
    parser.add_argument("--processes", type=int, default=2, help="API processes of the second serve row [2]")
    parser.add_argument("--storage-url", action="append", default=[], help="also measure with blobs at this URL")
    parser.add_argument("--storage-options", type=json.loads, default={}, help="fsspec options (JSON) for those")
    parser.add_argument("--out", type=Path, default=Path("load-out/load.json"), help="the JSON [load-out/load.json]")
    parser.add_argument("--work-dir", type=Path, help="where the temporary service and block live [system temp]")
    parser.add_argument("--client-processes", type=int, help="processes the clients are spread over [4; quick 2]")
    parser.add_argument("--serve-static", nargs=2, metavar=("PORT", "FILES_JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--client-share", nargs=2, metavar=("SPEC_JSON", "OUT_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_static:  # the static-file server's own process
        serve_static(int(args.serve_static[0]), Path(args.serve_static[1]))
        return 0
    if args.client_share:  # one client process of a serve phase
        client_share_process(Path(args.client_share[0]), Path(args.client_share[1]))
        return 0
    quick = args.quick
    options = Options(
        clients=args.clients or (50 if quick else 200),
        seconds=args.seconds or (5.0 if quick else 60.0),
        block_mb=args.block_mb or (50 if quick else 1100),
        processes=args.processes,
        client_processes=args.client_processes or (2 if quick else 4),
        storage_urls=args.storage_url,
        storage_options=args.storage_options,
        out=args.out,
        work_dir=args.work_dir,
        quick=quick,
    )
    result = run(options)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {options.out}")
    return 1 if any(row["serve"]["errors"] for row in result["rows"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
