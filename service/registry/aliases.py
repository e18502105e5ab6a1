"""Aliases: names users move between the versions of a stream (`STREAM@prod`), each move recorded.

`latest` is not an alias (it is always the newest version) and a name that reads as a version
number (`v3`) would be ambiguous, so neither can be set.
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.registry.tables import Alias, AliasEvent, DatasetVersion, utcnow

NAME = r"[A-Za-z][A-Za-z0-9_-]{0,63}"
_NAME = re.compile(f"^{NAME}$")
RESERVED = "latest"
_VERSION_LIKE = re.compile(r"^v[0-9]+$")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be an alias, or None when it can."""
    if name == RESERVED:
        return f"'{RESERVED}' is reserved: it always resolves to the newest version"
    if _VERSION_LIKE.match(name):
        return f"{name!r} reads as a version number; choose a name that does not look like vN"
    if not _NAME.match(name):
        return f"{name!r} is not an alias name: a letter, then up to 63 letters, digits, '_' or '-'"
    return None


def get(session: Session, stream_id: int, name: str, *, lock: bool = False) -> Alias | None:
    stmt = select(Alias).where(Alias.stream_id == stream_id, Alias.name == name)
    if lock:
        stmt = stmt.with_for_update(of=Alias)
    return session.scalar(stmt)


def of_stream(session: Session, stream_id: int) -> list[Alias]:
    return list(session.scalars(select(Alias).where(Alias.stream_id == stream_id).order_by(Alias.name)))


def pointing_at(session: Session, version_id: int) -> list[Alias]:
    return list(session.scalars(select(Alias).where(Alias.version_id == version_id).order_by(Alias.name)))


def history(session: Session, stream_id: int) -> list[AliasEvent]:
    """Every move of every alias of the stream (removed ones too), oldest first."""
    stmt = select(AliasEvent).where(AliasEvent.stream_id == stream_id).order_by(AliasEvent.id)
    return list(session.scalars(stmt))


def move(session: Session, stream_id: int, name: str, version: DatasetVersion, actor: str) -> tuple[Alias, AliasEvent | None]:
    """Point the alias at `version` (creating it); the event, or None when it pointed there already.

    The caller holds the stream's row lock, so two moves of one alias are recorded one after the other.
    """
    alias = get(session, stream_id, name)
    now = utcnow()
    if alias is not None and alias.version_id == version.id:
        return alias, None
    event = AliasEvent(
        stream_id=stream_id, name=name, from_version_id=alias.version_id if alias else None,
        to_version_id=version.id, actor=actor, at=now,
    )  # fmt: skip
    if alias is None:
        alias = Alias(stream_id=stream_id, name=name, version_id=version.id, moved_by=actor, moved_at=now)
        session.add(alias)
    else:
        alias.version_id, alias.moved_by, alias.moved_at = version.id, actor, now
    session.add(event)
    session.flush()
    session.refresh(alias)
    return alias, event


def remove(session: Session, alias: Alias, actor: str) -> AliasEvent:
    event = AliasEvent(
        stream_id=alias.stream_id, name=alias.name, from_version_id=alias.version_id, to_version_id=None,
        actor=actor, at=utcnow(),
    )  # fmt: skip
    session.add(event)
    session.delete(alias)
    session.flush()
    return event
