"""`diet serve`: the whole service on one machine, with no server to install.

SQLite for the registry, a local directory for blobs and a folder-based Celery
broker, all under the data directory, and a real Celery worker started as a
child process, so that embedded and deployed modes run the same task code.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

from service import logs
from service.registry import jobs, migrate
from service.registry.db import Database
from service.settings import Settings

log = logging.getLogger(__name__)


class EmbeddedWorker:
    """The Celery worker beside the API: one child process, restarted if it dies."""

    def __init__(self, settings: Settings) -> None:
        self.command = [
            sys.executable, "-m", "celery", "-A", "worker.app", "worker",
            "--pool=solo", "--concurrency=1", f"--queues={settings.queue},{settings.queue}.webhooks",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            f"--loglevel={settings.log_level}", "--hostname=diet-embedded@%h",
            "--beat",  # the only worker of this service: it also sends the periodic retention sweep
        ]  # fmt: skip
        # The child reads the same DIET_* variables; the data dir is made absolute so both agree.
        self.env = {**os.environ, "DIET_DATA_DIR": str(settings.data_dir)}
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="embedded-worker", daemon=True)

    def start(self) -> None:
        self._process = subprocess.Popen(self.command, env=self.env)
        self._watcher.start()

    def _watch(self) -> None:
        while True:
            assert self._process is not None
            code = self._process.wait()
            if self._stopping.wait(0 if code == 0 else 2):
                return
            log.error("the embedded worker exited with code %s; starting it again", code)
            self._process = subprocess.Popen(self.command, env=self.env)

    def stop(self, grace_s: float = 10.0) -> None:
        self._stopping.set()
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()  # Celery's warm shutdown; a running job is re-queued on the next start
        try:
            self._process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def requeue_orphaned_jobs(settings: Settings) -> None:
    """Before the worker starts, every job marked running lost its worker: queue it again."""
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            count = jobs.requeue_orphans(session)
            session.commit()
    finally:
        db.dispose()
    if count:
        log.info("re-queued %s job(s) that were running when the service stopped", count)


def banner(settings: Settings, host: str, port: int, worker: bool, workers: int = 1) -> str:
    url = f"http://{host}:{port}"
    processes = f", {workers} API processes" if workers > 1 else ""
    lines = [
        f"DIET service on {url}  (API docs: {url}/docs{processes})",
        f"  data: {settings.data_dir}",
        f"  registry: {settings.database_url.split('://')[0]}, broker: {settings.broker_url.split('://')[0]}, "
        f"storage: {settings.storage_url}, worker: {'started here' if worker else 'not started here'}",
    ]
    if settings.bootstrap_token is not None:
        lines.append("  token: DIET_BOOTSTRAP_TOKEN is accepted as an admin token (Authorization: Bearer ...)")
    else:
        lines.append("  token: run `diet tokens create --scope admin` (or set DIET_BOOTSTRAP_TOKEN before starting)")
    return "\n".join(lines)


def serve(settings: Settings, host: str, port: int, worker: bool = True, workers: int = 1) -> None:
    """Migrate the registry, start the worker, and serve the API (in `workers` processes) until interrupted.

    The migration runs here, once, before any API process starts; the processes then share the registry
    (SQLite in WAL mode, whose writers wait their turn: service.registry.db) and the port (uvicorn's
    supervisor forks them and restarts one that dies).
    """
    import uvicorn

    from service.app import create_app
    from service.http_protocol import with_head_timeout

    logs.configure(settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.database_url)
    embedded: EmbeddedWorker | None = None
    if worker:
        if settings.uses_folder_broker:
            # The folder broker serves this machine only, so no other worker can hold these jobs.
            requeue_orphaned_jobs(settings)
        embedded = EmbeddedWorker(settings)
        embedded.start()
    print(banner(settings, host, port, worker, workers), flush=True)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again to exit; by default that
    # would end this process before the worker is stopped, so SIGTERM ends it through `finally` instead.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    # asyncio's own loop: it sends artifacts with sendfile(2) (service.http_protocol); uvloop cannot.
    try:
        if workers == 1:
            uvicorn.run(
                create_app(settings), host=host, port=port, log_config=None, loop="asyncio",
                http=with_head_timeout(settings.body_timeout_s),
            )  # fmt: skip
        else:
            # Each process builds its app from the environment: the data dir made absolute, so all agree.
            os.environ["DIET_DATA_DIR"] = str(settings.data_dir)
            uvicorn.run(
                "service.app:main", factory=True, workers=workers, host=host, port=port, log_config=None,
                loop="asyncio", http="service.http_protocol:HttpProtocol",
            )  # fmt: skip
    finally:
        if embedded is not None:
            embedded.stop()
