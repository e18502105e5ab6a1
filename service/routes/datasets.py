"""GET /datasets, GET /datasets/{STREAM@vN|STREAM@latest}, and artifact downloads."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from diet_client.models import Manifest, Page
from service.auth import require
from service.deps import DatabaseDep, SessionDep, StorageDep
from service.manifest import MEDIA_TYPES, manifest
from service.pages import MAX_ID, PagingDep, page_out
from service.problems import Problem
from service.ranges import byte_range
from service.registry import datasets
from service.registry.tables import DatasetVersion
from service.routes.streams import find_stream, stream_filter

router = APIRouter(tags=["datasets"])

_VERSION = re.compile(r"^(?P<stream>[A-Za-z_][A-Za-z0-9_]{0,63})@(?:v(?P<number>[1-9][0-9]*)|latest)$")


def find_version(session: Session, version: str) -> DatasetVersion:
    match = _VERSION.match(version)
    if match is None:
        raise Problem(422, f"{version!r} is not a version: write STREAM@vN or STREAM@latest", title="Invalid version")
    stream = find_stream(session, match["stream"])
    if match["number"] is None:
        found = datasets.latest(session, stream.id)
        if found is None:
            raise Problem(404, f"stream {stream.name!r} has no dataset version yet")
        return found
    number = int(match["number"])
    found = datasets.get(session, stream.id, number) if number <= MAX_ID else None  # past any column's range
    if found is None:
        raise Problem(404, f"no dataset version {version}")
    return found


@router.get("/datasets", response_model=Page[Manifest], dependencies=[Depends(require("read"))])
def list_datasets(
    request: Request,
    session: SessionDep,
    paging: PagingDep,
    stream: Annotated[str | None, Query()] = None,
) -> Page[Manifest]:
    """Versions, newest first."""
    stream_id = stream_filter(session, stream)
    page = datasets.page(session, stream_id, paging.limit, paging.offset)
    return page_out(page, [manifest(v) for v in page.items], request)


@router.get("/datasets/{version}", response_model=Manifest, dependencies=[Depends(require("read"))])
def get_dataset(version: str, session: SessionDep) -> Manifest:
    return manifest(find_version(session, version))


@router.get("/datasets/{version}/files/{name}", dependencies=[Depends(require("read"))])
@router.head("/datasets/{version}/files/{name}", dependencies=[Depends(require("read"))], operation_id="head_file")
def download(version: str, name: str, request: Request, db: DatabaseDep, storage: StorageDep) -> Response:
    """Stream an artifact; `ETag` is its sha256, `Range: bytes=a-b` gets part of it."""
    # A session of its own, closed before streaming: a download must not hold a registry transaction.
    with db.read_session() as session:
        found = find_version(session, version)
        artifact = next((a for a in found.artifacts if a["name"] == name), None)
        if artifact is None:
            names = ", ".join(a["name"] for a in found.artifacts)
            raise Problem(404, f"{found.label} has no file {name!r} (it has {names})")

    size = artifact["bytes"]
    etag = f'"{artifact["sha256"]}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, max-age=31536000, immutable",  # versions never change
        "Content-Disposition": f'attachment; filename="{name}"',
    }
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if_range = request.headers.get("if-range")
    wanted = byte_range(request.headers.get("range"), size) if if_range in (None, etag) else None
    status, (first, last) = (206, wanted) if wanted else (200, (0, size - 1))
    if wanted:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(last - first + 1)
    media_type = MEDIA_TYPES.get(name, "application/octet-stream")
    if request.method == "HEAD" or size == 0:
        return Response(status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(
        storage.iter_bytes(artifact["key"], first, last), status_code=status, headers=headers, media_type=media_type
    )


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags
