"""Webhook signatures: `X-DIET-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`.

The MAC is over `f"{t}.".encode() + body` with the webhook's secret, so a receiver checks both the
body and when it was signed (a replayed old delivery is refused by `verify`'s tolerance).
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-DIET-Signature"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for `body` signed now (or at `timestamp`)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={signature(secret, t, body)}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: float = 300, now: float | None = None) -> bool:
    """Whether `header` signs `body` with `secret` within `tolerance_s` of now."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    return hmac.compare_digest(parts.get("v1", ""), signature(secret, t, body))
