"""Helpers of the service tests: ports, clients, an in-thread API, child processes, problem checks."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from service.app import create_app
from service.http_protocol import with_head_timeout
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP_TOKEN = "bootstrap-" + secrets.token_hex(16)
PARQUET = {"Content-Type": "application/vnd.apache.parquet"}
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client(base_url: str, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=timeout)


def embedded_settings(data_dir: Path, **overrides: object) -> Settings:
    return Settings(data_dir=data_dir, bootstrap_token=BOOTSTRAP_TOKEN, worker_device="cpu", **overrides)


def expect_problem(response: httpx.Response, status: int, *phrases: str) -> dict:
    """Assert a problem document with this status whose detail says each phrase; returns it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"]
    for phrase in phrases:
        assert phrase in body["detail"], body
    return body


@dataclass
class ThreadedService:
    """The real app under a real uvicorn, in a thread of the test process (no worker: jobs stay queued)."""

    settings: Settings
    base_url: str
    server: uvicorn.Server
    thread: threading.Thread

    @classmethod
    def start(cls, settings: Settings) -> ThreadedService:
        port = free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_config=None,
            http=with_head_timeout(settings.body_timeout_s),
        )  # fmt: skip
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test API did not start")
            time.sleep(0.05)
        return cls(settings, f"http://127.0.0.1:{port}", server, thread)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class Process:
    """A child process whose output goes to a log file, shown when something goes wrong."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        # A session of its own, so stopping it also stops the children it started (the embedded worker).
        self.popen = subprocess.Popen(
            command, env={**os.environ, "PYTHONPATH": str(REPO), **env}, cwd=REPO,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def logs(self, tail: int = 8000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def wait_healthy(self, base_url: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} did not answer /healthz within {timeout}s:\n{self.logs()}")

    def children(self) -> list[int]:
        """Pids of its direct children (Linux /proc)."""
        pid = self.popen.pid
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def kill(self) -> None:
        """SIGKILL: the process dies at once, with no chance to clean up (a crash, the OOM killer)."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM, as a service manager stops it, then wait for it to exit."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def clean_up(self) -> None:
        """Stop it, and kill anything it left in its session (whose id is its pid)."""
        self.stop()
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()


def deployed_env(tmp_path: Path, database_url: str, redis_url: str, redis_prefix: str, **settings: object) -> dict[str, str]:
    """The DIET_* environment of an API and workers on Postgres, Redis and a storage folder (docker-compose's)."""
    env = {
        "DIET_DATA_DIR": str(tmp_path / "unused"),
        "DIET_DATABASE_URL": database_url,
        "DIET_BROKER_URL": redis_url,
        "DIET_BROKER_OPTIONS": json.dumps({"global_keyprefix": redis_prefix}),
        "DIET_STORAGE_URL": f"file://{tmp_path / 'bucket'}",
        "DIET_BOOTSTRAP_TOKEN": BOOTSTRAP_TOKEN,
        "DIET_WORKER_DEVICE": "cpu",
        "DIET_QUEUE": f"{redis_prefix}distill",
    }
    env.update({f"DIET_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def api_process(name: str, env: dict[str, str], log_dir: Path, port: int) -> Process:
    # As docker-compose runs it: the service's HTTP protocol on asyncio's loop (artifacts go out by sendfile).
    command = [sys.executable, "-m", "uvicorn", "--factory", "service.app:main", "--port", str(port), "--no-access-log",
               "--http", "service.http_protocol:HttpProtocol", "--loop", "asyncio"]  # fmt: skip
    return Process(name, command, env, log_dir)


def start_api(
    env: dict[str, str], log_dir: Path, processes: list[Process], name: str = "api", port: int | None = None
) -> tuple[Process, str]:
    """A deployed API on `port` (a free one by default), registered for clean-up and answering /healthz:
    (process, base URL). An API restarted on its predecessor's port is where that one's clients retry."""
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    api = api_process(name, env, log_dir, port)
    processes.append(api)
    api.wait_healthy(base_url)
    return api, base_url


def worker_process(name: str, env: dict[str, str], log_dir: Path, *, beat: bool = False) -> Process:
    """A Celery worker as deployed (one job at a time, each in a fresh child process); no gossip, mingle or
    remote control with other tests' workers.

    With `beat`, it also runs the beat that sends the periodic retention sweep (every DIET_SWEEP_S)."""
    command = [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool=prefork", "--concurrency=1",
        f"--queues={env['DIET_QUEUE']},{env['DIET_QUEUE']}.webhooks", "--loglevel=INFO", f"--hostname={env['DIET_QUEUE']}-{name}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", *(["--beat"] if beat else []),
    ]  # fmt: skip
    return Process(name, command, env, log_dir)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived (a signature's age is checked against it)


class Receiver:
    """A real HTTP server on 127.0.0.1 that records every POST and answers with the next status of `answers`
    (then 200): a webhook receiver for the tests."""

    def __init__(self, answers: list[int] | None = None) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.answers = list(answers or [])
        self.received: list[Received] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer._lock:
                    outer.received.append(Received(self.path, dict(self.headers.items()), body, time.time()))
                    status = outer.answers.pop(0) if outer.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"the receiver got {len(self.received)} of {count} requests in {timeout}s")
            time.sleep(0.05)
        return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
