"""Pagination of list endpoints: `?limit=&offset=` in, `{items, total, limit, offset, next}` out."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import Depends, Path, Query, Request
from pydantic import BaseModel

from diet_client.models import Page
from service.registry import paging

T = TypeVar("T")

# Ids and offsets fit the registry's 32-bit integer columns; larger numbers are refused (422) before any query.
MAX_ID = 2**31 - 1
# Stages are numbered from 1; a stage past this is refused (422): no stream is cut that finely.
MAX_STAGE = 1_000_000
Id = Annotated[int, Path(ge=1, le=MAX_ID)]


class PageParams(BaseModel):
    limit: int
    offset: int


def page_params(
    limit: Annotated[int, Query(ge=1, le=500, description="items per page")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID, description="items to skip")] = 0,
) -> PageParams:
    return PageParams(limit=limit, offset=offset)


PagingDep = Annotated[PageParams, Depends(page_params)]


def page_out(page: paging.Page[object], items: list[T], request: Request) -> Page[T]:
    next_url = None
    if page.offset + len(items) < page.total:
        query = request.url.include_query_params(offset=page.offset + page.limit).query
        next_url = f"{request.url.path}?{query}"
    return Page[T](items=items, total=page.total, limit=page.limit, offset=page.offset, next=next_url)
