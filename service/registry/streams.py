"""Streams: a named log source with its schema and the configs of its reference model and distillation."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.registry.tables import Stream


def by_name(session: Session, name: str, *, lock: bool = False) -> Stream | None:
    stmt = select(Stream).where(Stream.name == name)
    if lock:
        stmt = stmt.with_for_update()
    return session.scalar(stmt)


def create(
    session: Session,
    name: str,
    schema: dict[str, Any],
    reference: dict[str, Any],
    distill: dict[str, Any],
    licence: str | None = None,
    audit: dict[str, Any] | None = None,
) -> Stream:
    stream = Stream(name=name, schema_doc=schema, reference=reference, distill=distill, licence=licence, audit=audit)
    session.add(stream)
    session.flush()
    return stream


def list_all(session: Session) -> list[Stream]:
    return list(session.scalars(select(Stream).order_by(Stream.name)))
