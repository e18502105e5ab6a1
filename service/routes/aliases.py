"""PUT/DELETE /datasets/{stream}/aliases/{name} (publish scope) and GET /datasets/{stream}/aliases, with history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response
from sqlalchemy.orm import Session

from diet_client.models import Alias, Aliases, AliasIn, AliasMove
from service import webhooks
from service.auth import Principal, require
from service.deps import SessionDep
from service.pages import MAX_ID
from service.problems import Problem
from service.registry import aliases, datasets, streams
from service.registry.tables import Alias as AliasRow
from service.registry.tables import AliasEvent, DatasetVersion, Stream
from service.routes.streams import find_stream

router = APIRouter(tags=["aliases"])

AliasName = Annotated[str, Path(description="a letter, then letters, digits, '_' or '-'; not 'latest' nor vN")]


def _announce(session: Session, stream: Stream, event: AliasEvent) -> None:
    """alias.moved to the stream's webhooks (sent once the move commits); `to` null: removed."""

    def label(version_id: int | None) -> str | None:
        return session.get(DatasetVersion, version_id).label if version_id is not None else None

    webhooks.emit(session, stream, "alias.moved", {
        "alias": event.name, "from": label(event.from_version_id), "to": label(event.to_version_id),
        "by": event.actor, "at": event.at.isoformat(),
    })  # fmt: skip


def move_out(event: AliasEvent) -> AliasMove:
    return AliasMove(
        alias=event.name, from_version=event.from_version.label if event.from_version else None,
        to_version=event.to_version.label if event.to_version else None, actor=event.actor, at=event.at,
    )  # fmt: skip


def alias_out(alias: AliasRow, stream: Stream, events: list[AliasEvent]) -> Alias:
    return Alias(
        stream=stream.name, name=alias.name, version=alias.version.label, number=alias.version.number,
        moved_by=alias.moved_by, moved_at=alias.moved_at,
        history=[move_out(e) for e in events if e.name == alias.name],
    )  # fmt: skip


def _checked_name(name: str) -> str:
    problem = aliases.name_problem(name)
    if problem is not None:
        raise Problem(422, problem, title="Invalid alias name")
    return name


def _locked_stream(session: Session, name: str) -> Stream:
    find_stream(session, name)  # a 404 for a stream that does not exist
    stream = streams.by_name(session, name, lock=True)  # alias moves of a stream are recorded one at a time
    assert stream is not None  # streams are never deleted
    return stream


@router.put(
    "/datasets/{stream}/aliases/{name}",
    response_model=Alias,
    responses={201: {"model": Alias, "description": "the alias was created"}},
)
def set_alias(
    stream: str,
    name: AliasName,
    body: AliasIn,
    session: SessionDep,
    response: Response,
    principal: Annotated[Principal, Depends(require("publish"))],
) -> Alias:
    """Point the alias at `STREAM@v{version}` (creating it: 201); each move is recorded with who made it."""
    _checked_name(name)
    row = _locked_stream(session, stream)
    version = datasets.get(session, row.id, body.version) if body.version <= MAX_ID else None
    if version is None:
        raise Problem(404, f"no dataset version {row.name}@v{body.version}")
    if version.deleted_at is not None:
        raise Problem(409, f"{version.label} is deleted: restore it before pointing an alias at it")
    existed = aliases.get(session, row.id, name) is not None
    alias, event = aliases.move(session, row.id, name, version, principal.name)
    if event is not None:
        _announce(session, row, event)
    session.commit()
    response.status_code = 200 if existed else 201
    return alias_out(alias, row, aliases.history(session, row.id))


@router.delete("/datasets/{stream}/aliases/{name}", response_model=AliasMove)
def remove_alias(
    stream: str, name: AliasName, session: SessionDep, principal: Annotated[Principal, Depends(require("publish"))]
) -> AliasMove:
    """Remove the alias; its history stays (GET .../aliases lists it under `removed`). Answers the removal."""
    _checked_name(name)
    row = _locked_stream(session, stream)
    alias = aliases.get(session, row.id, name)
    if alias is None:
        raise Problem(404, f"stream {row.name!r} has no alias {name!r}")
    event = aliases.remove(session, alias, principal.name)
    _announce(session, row, event)
    session.commit()
    session.refresh(event)
    return move_out(event)


@router.get("/datasets/{stream}/aliases", response_model=Aliases, dependencies=[Depends(require("read"))])
def list_aliases(stream: str, session: SessionDep) -> Aliases:
    """The stream's aliases, each with the version it names now and its history; then removed aliases' history."""
    row = find_stream(session, stream)
    events = aliases.history(session, row.id)
    current = aliases.of_stream(session, row.id)
    names = {a.name for a in current}
    return Aliases(
        stream=row.name,
        aliases=[alias_out(a, row, events) for a in current],
        removed=[move_out(e) for e in events if e.name not in names],
    )
