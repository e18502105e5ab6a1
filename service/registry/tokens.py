"""API tokens: created once, shown once, kept as sha256 digests."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.registry.tables import Token, utcnow

SCOPES = ("ingest", "distill", "read", "admin")
PREFIX = "diet_"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(session: Session, name: str, scopes: Iterable[str]) -> tuple[Token, str]:
    """A new token row and its secret (which is not stored)."""
    wanted = sorted(set(scopes))
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown or not wanted:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}; got {wanted}")
    secret = PREFIX + secrets.token_urlsafe(32)
    token = Token(name=name, token_sha256=digest(secret), scopes=wanted)
    session.add(token)
    session.flush()
    return token, secret


def find_active(session: Session, secret: str) -> Token | None:
    return session.scalar(select(Token).where(Token.token_sha256 == digest(secret), Token.revoked_at.is_(None)))


def list_all(session: Session) -> list[Token]:
    return list(session.scalars(select(Token).order_by(Token.id)))


def revoke(session: Session, token_id: int) -> bool:
    token = session.get(Token, token_id)
    if token is None or token.revoked_at is not None:
        return False
    token.revoked_at = utcnow()
    return True
