"""Offset pagination of a select statement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

T = TypeVar("T")


@dataclass
class Page(Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


def paginate(session: Session, stmt: Select[Any], limit: int, offset: int) -> Page[Any]:
    """One page of stmt's rows (stmt must be ordered) and the count of all of them."""
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    items = list(session.scalars(stmt.limit(limit).offset(offset)).unique())
    return Page(items, total, limit, offset)
