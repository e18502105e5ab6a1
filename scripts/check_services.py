"""Fail fast, with the command that fixes it, when a server the tests need is down."""

from __future__ import annotations

import socket
import sys

SERVICES = {
    "PostgreSQL": (
        "127.0.0.1",
        5432,
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    ),
    "Redis": (
        "127.0.0.1",
        6379,
        'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no',
    ),
}


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def main() -> int:
    down = [(name, cmd) for name, (host, port, cmd) in SERVICES.items() if not reachable(host, port)]
    for name, cmd in down:
        host, port, _ = SERVICES[name]
        print(f"{name} is not answering on {host}:{port}. Start it with:\n    {cmd}", file=sys.stderr)
    return 1 if down else 0


if __name__ == "__main__":
    sys.exit(main())
