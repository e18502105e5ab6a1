"""GET /datasets, GET /datasets/{STREAM@vN|@latest|@ALIAS|@sha256:DIGEST}, and artifact downloads."""

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
from service.registry import aliases, datasets
from service.registry.tables import DatasetVersion
from service.routes.streams import find_stream, stream_filter

router = APIRouter(tags=["datasets"])

_VERSION = re.compile(
    r"^(?P<stream>[A-Za-z_][A-Za-z0-9_]{0,63})@(?:v(?P<number>[1-9][0-9]*)|(?P<latest>latest)"
    rf"|sha256:(?P<digest>[0-9a-f]{{64}})|(?P<alias>{aliases.NAME}))$"
)
VERSION_FORMS = "STREAM@vN, STREAM@latest, STREAM@ALIAS or STREAM@sha256:DIGEST (of its manifest.json)"
# Every read of a version names the concrete version it resolved to (files and pages have no body to say it in).
RESOLVED_HEADER = "Diet-Version"


def find_version(session: Session, version: str, *, include_deleted: bool = False) -> DatasetVersion:
    """The version a reference names: vN, latest, an alias or a manifest digest.

    Deleted versions are found only by number and only with `include_deleted` (restore); otherwise
    they are a 404 that says how to restore them, or a 410 once their files are freed.
    """
    match = _VERSION.match(version)
    if match is None or (match["alias"] and aliases.name_problem(match["alias"])):  # v0, v01: no version, no alias
        raise Problem(422, f"{version!r} is not a version: write {VERSION_FORMS}", title="Invalid version")
    stream = find_stream(session, match["stream"])
    if match["latest"]:
        found = datasets.latest(session, stream.id)
        if found is None:
            raise Problem(404, f"stream {stream.name!r} has no dataset version yet")
        return found
    if match["alias"]:
        alias = aliases.get(session, stream.id, match["alias"])
        if alias is None:
            raise Problem(404, f"stream {stream.name!r} has no alias {match['alias']!r} (GET /datasets/{stream.name}/aliases)")
        return alias.version
    if match["digest"]:
        by_digest = datasets.by_manifest_digest(session, stream.id, match["digest"])
        if by_digest is None:
            raise Problem(404, f"no version of {stream.name!r} has a manifest with sha256 {match['digest']}")
        return by_digest
    number = int(match["number"])
    found = datasets.get(session, stream.id, number) if number <= MAX_ID else None  # past any column's range
    if found is None:
        raise Problem(404, f"no dataset version {version}")
    if found.deleted_at is not None and not include_deleted:
        when = f"{found.deleted_at:%Y-%m-%d %H:%M:%S} UTC by {found.deleted_by}"
        if found.purged_at is not None:
            raise Problem(410, f"{found.label} was deleted at {when} and its files were freed")
        raise Problem(404, f"{found.label} was deleted at {when}; restore it with POST /datasets/{found.label}/restore")
    return found


def resolved(found: DatasetVersion) -> dict[str, str]:
    return {RESOLVED_HEADER: found.label}


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
def get_dataset(version: str, session: SessionDep, response: Response) -> Manifest:
    """The manifest of a version, named any of the ways `find_version` takes; `version` in it is the one resolved."""
    found = find_version(session, version)
    response.headers.update(resolved(found))
    return manifest(found)


@router.get("/datasets/{version}/files/{name}", dependencies=[Depends(require("read"))])
@router.head("/datasets/{version}/files/{name}", dependencies=[Depends(require("read"))], operation_id="head_file")
def download(version: str, name: str, request: Request, db: DatabaseDep, storage: StorageDep) -> Response:
    """Stream an artifact; `ETag` is its sha256, `Range: bytes=a-b` gets part of it."""
    # A session of its own, closed before streaming: a download must not hold a registry transaction.
    with db.read_session() as session:
        found = find_version(session, version)
        resolved_label = resolved(found)
        artifact = next((a for a in found.artifacts if a["name"] == name), None)
        if artifact is None:
            names = ", ".join(a["name"] for a in found.artifacts)
            raise Problem(404, f"{found.label} has no file {name!r} (it has {names})")

    size = artifact["bytes"]
    etag = f'"{artifact["sha256"]}"'
    headers = {
        **resolved_label,
        "ETag": etag,
        "Accept-Ranges": "bytes",
        # versions never change, but an alias or `latest` may name another one tomorrow
        "Cache-Control": "private, max-age=31536000, immutable" if _pinned(version) else "private, no-cache",
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


def _pinned(version: str) -> bool:
    match = _VERSION.match(version)
    return match is not None and bool(match["number"] or match["digest"])


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags
