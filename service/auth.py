"""Bearer tokens with scopes: ingest, distill, read, publish (move aliases), webhooks, admin (admin may do
everything).

`DIET_BOOTSTRAP_TOKEN`, when set, is accepted as an admin token, so a fresh
deployment (or a test) can start without a token in the database.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from service.deps import DatabaseDep, SettingsDep
from service.problems import Problem
from service.registry import tokens
from service.registry.db import Database
from service.registry.tables import utcnow

_bearer = HTTPBearer(auto_error=False, description="an API token (`diet tokens create`)")


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def current_principal(
    settings: SettingsDep,
    db: DatabaseDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    # async: the bootstrap token needs no thread; a stored token is looked up in one.
    if credentials is None:
        raise _unauthorized("send an API token: 'Authorization: Bearer <token>'")
    secret = credentials.credentials
    bootstrap = settings.bootstrap_token
    if bootstrap is not None and hmac.compare_digest(secret.encode(), bootstrap.get_secret_value().encode()):
        return Principal("bootstrap", frozenset({"admin"}))
    return await run_in_threadpool(_stored_principal, db, secret)


def _stored_principal(db: Database, secret: str) -> Principal:
    # A session of its own, closed at once: a long upload must not hold a registry transaction.
    with db.read_session() as session:
        token = tokens.find(session, secret)
        if token is None:
            raise _unauthorized("the API token is unknown or revoked")
        state = token.state(utcnow())
        if state == "expired":
            raise _unauthorized(f"the API token expired at {token.expires_at:%Y-%m-%d %H:%M:%S} UTC; create another")
        if state != "active":
            raise _unauthorized("the API token is unknown or revoked")
        return Principal(token.name, frozenset(token.scopes))


def require(scope: str) -> Callable[..., Principal]:
    """A dependency that admits tokens holding `scope` (or admin)."""

    async def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.allows(scope):
            raise Problem(403, f"this token lacks the '{scope}' scope (it has: {', '.join(sorted(principal.scopes))})")
        return principal

    return dependency
