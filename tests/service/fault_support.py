"""Servers of a test's own, to break on purpose: a Redis without persistence, a PostgreSQL cluster.

The machine's shared servers (127.0.0.1:5432 and :6379) serve other tests and must never be
stopped; these run on free ports from temporary folders and are torn down by their fixtures.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from service_support import free_port


def wait_for_port(port: int, up: bool, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not go {'up' if up else 'down'} in {timeout}s")


class OwnRedis:
    """redis-server on a free port, no RDB snapshots and no AOF: a restart loses every key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(self.folder)]  # fmt: skip
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, up=True)

    def kill(self) -> None:
        """SIGKILL: whatever it held in memory (the queue) is gone."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        wait_for_port(self.port, up=False)

    def restart(self) -> None:
        self.kill()
        self.start()


def _as_postgres_user(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise RuntimeError(f"{name} not found (PATH or /usr/lib/postgresql/*/bin)")


class OwnPostgres:
    """A PostgreSQL cluster of its own (initdb, trust auth) on a free port, stopped and started with pg_ctl."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: the postgres user must be able to reach it.
        self.folder = Path(tempfile.mkdtemp(prefix="diet-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def _run(self, *command: str) -> None:
        result = subprocess.run(_as_postgres_user(list(command)), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start")

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as when the database server goes away."""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(
            _as_postgres_user([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]),
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(self.folder, ignore_errors=True)
