"""GET /datasets, GET /datasets/{STREAM@vN|@latest|@ALIAS|@sha256:DIGEST}, and artifact downloads."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from diet_client.models import Manifest, Page
from service.auth import require
from service.deps import DatabaseDep, SessionDep, SettingsDep, StorageDep
from service.etags import etag_matches
from service.file_response import FileRangeResponse
from service.manifest import INTERNAL_ARTIFACTS, MEDIA_TYPES, manifest
from service.pages import MAX_ID, PagingDep, page_out
from service.problems import Problem
from service.ranges import byte_range
from service.registry import aliases, datasets
from service.registry.db import Database
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
async def get_dataset(version: str, db: DatabaseDep) -> Response:
    """The manifest of a version, named any of the ways `find_version` takes; `version` in it is the one resolved."""
    # One worker thread does the lookup and renders the answer: no session dependency's thread hops.
    return await run_in_threadpool(_manifest_answer, db, version)


def _manifest_answer(db: Database, version: str) -> Response:
    with db.read_session() as session:
        found = find_version(session, version)
        body = manifest(found).model_dump_json(by_alias=True).encode()  # as FastAPI would render it
        return Response(body, media_type="application/json", headers=resolved(found))


@dataclass(frozen=True)
class _File:
    label: str
    key: str
    bytes: int
    sha256: str


def _find_file(db: Database, version: str, name: str) -> _File:
    # A session of its own, closed before sending: a download must not hold a registry transaction.
    with db.read_session() as session:
        found = find_version(session, version)
        # the optimiser state the next stage resumes from is the worker's, not a consumer's file
        public = [a for a in found.artifacts if a["name"] not in INTERNAL_ARTIFACTS]
        artifact = next((a for a in public if a["name"] == name), None)
        if artifact is None:
            names = ", ".join(a["name"] for a in public)
            raise Problem(404, f"{found.label} has no file {name!r} to download (it has {names})")
        return _File(found.label, artifact["key"], artifact["bytes"], artifact["sha256"])


@router.get("/datasets/{version}/files/{name}", dependencies=[Depends(require("read"))])
@router.head("/datasets/{version}/files/{name}", dependencies=[Depends(require("read"))], operation_id="head_file")
async def download(
    version: str, name: str, request: Request, db: DatabaseDep, storage: StorageDep, settings: SettingsDep
) -> Response:
    """Send an artifact; `ETag` is its sha256, `Range: bytes=a-b` gets part of it.

    With DIET_ARTIFACT_REDIRECT on object storage, a GET is answered 307 to a presigned URL of the
    blob instead (HEAD still answers here, with the size and ETag)."""
    artifact = await run_in_threadpool(_find_file, db, version, name)
    size = artifact.bytes
    etag = f'"{artifact.sha256}"'
    headers = {
        RESOLVED_HEADER: artifact.label,
        "ETag": etag,
        "Accept-Ranges": "bytes",
        # versions never change, but an alias or `latest` may name another one tomorrow
        "Cache-Control": "private, max-age=31536000, immutable" if _pinned(version) else "private, no-cache",
        "Content-Disposition": f'attachment; filename="{name}"',
    }
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if settings.artifact_redirect and request.method == "GET":
        url = await run_in_threadpool(storage.presigned_url, artifact.key, settings.artifact_redirect_expires_s)
        if url is not None:  # the client follows it with its Range, and checks the bytes against the ETag
            redirect = {"Location": url, "ETag": etag, "Cache-Control": "private, no-store"}
            return Response(status_code=307, headers=redirect)
    if_range = request.headers.get("if-range")
    wanted = byte_range(request.headers.get("range"), size) if if_range in (None, etag) else None
    status, (first, last) = (206, wanted) if wanted else (200, (0, size - 1))
    if wanted:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(last - first + 1)
    media_type = MEDIA_TYPES.get(name, "application/octet-stream")
    if request.method == "HEAD" or size == 0:
        return Response(status_code=status, headers=headers, media_type=media_type)
    if storage.is_local:  # the kernel copies it from the page cache to the socket
        return FileRangeResponse(storage.path(artifact.key), first, last - first + 1, status, headers, media_type)
    return StreamingResponse(
        storage.iter_bytes(artifact.key, first, last), status_code=status, headers=headers, media_type=media_type
    )


def _pinned(version: str) -> bool:
    match = _VERSION.match(version)
    return match is not None and bool(match["number"] or match["digest"])
