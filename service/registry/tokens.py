"""API tokens: created once, shown once, kept as sha256 digests; revocable, optionally expiring."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.registry.tables import Token, utcnow

SCOPES = ("ingest", "distill", "read", "publish", "webhooks", "admin")  # publish: move aliases
PREFIX = "diet_"
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_duration(text: str) -> timedelta:
    """'90s', '15m', '12h', '30d', '2w' as a positive timedelta."""
    match = _DURATION.match(text.lower())
    if match is None or int(match[1]) == 0:
        raise ValueError(f"not a duration: {text!r}; write a positive number and a unit: 90s, 15m, 12h, 30d, 2w")
    return timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])


def create(
    session: Session, name: str, scopes: Iterable[str], expires_in: timedelta | None = None
) -> tuple[Token, str]:
    """A new token row and its secret (which is not stored)."""
    wanted = sorted(set(scopes))
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown or not wanted:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}; got {wanted}")
    if expires_in is not None and expires_in <= timedelta(0):
        raise ValueError("a token's lifetime must be positive")
    secret = PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    token = Token(
        name=name,
        token_sha256=digest(secret),
        scopes=wanted,
        created_at=now,
        expires_at=now + expires_in if expires_in is not None else None,
    )
    session.add(token)
    session.flush()
    return token, secret


def find(session: Session, secret: str) -> Token | None:
    """The token with this secret, in whatever state (see Token.state)."""
    return session.scalar(select(Token).where(Token.token_sha256 == digest(secret)))


def find_active(session: Session, secret: str) -> Token | None:
    token = find(session, secret)
    return token if token is not None and token.state(utcnow()) == "active" else None


def list_all(session: Session) -> list[Token]:
    return list(session.scalars(select(Token).order_by(Token.id)))


def revoke(session: Session, token_id: int) -> bool:
    token = session.get(Token, token_id)
    if token is None or token.revoked_at is not None:
        return False
    token.revoked_at = utcnow()
    return True
