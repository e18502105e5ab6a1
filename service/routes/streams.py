"""POST/GET /streams: a stream's definition is fixed once created."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from diet_client import models as wire
from diet_client.models import AuditPolicy
from diet_engine.config import CandidateConfig, ReferenceConfig
from diet_engine.evaluate.audit import AuditConfig, pool_models
from diet_engine.models import MODELS
from diet_engine.data.schema import NAME, StreamSchema
from service.answers import from_row
from service.auth import require
from service.deps import SessionDep, SettingsDep
from service.job_config import WALL_TIME, JobConfig
from service.problems import Problem
from service.registry import streams
from service.registry.tables import Stream

router = APIRouter(tags=["streams"])
_VALID_NAME = re.compile(NAME)


class StreamIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=NAME)]
    stream_schema: StreamSchema = Field(alias="schema", description="exactly the schema.json `diet convert` writes")
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    distill: JobConfig = Field(default_factory=JobConfig, description="defaults of every distill job")
    licence: str | None = Field(
        default=None, max_length=200, pattern=r"^[ -~]+$", description="the data's licence (an SPDX id), carried by exports"
    )
    audit: AuditPolicy | None = Field(default=None, description="audit every k-th stage's version (POST /jobs/audit)")

    @field_validator("audit")
    @classmethod
    def _known_pool(cls, audit: AuditPolicy | None) -> AuditPolicy | None:
        if audit is not None:
            AuditConfig(models=audit.models or pool_models(audit.pool), candidate=audit.candidate, repeats=audit.repeats)
            if "arch" in audit.candidate:
                raise ValueError("candidate.arch is the version's reference architecture")
            CandidateConfig.model_validate(audit.candidate)
        return audit

    @field_validator("reference")
    @classmethod
    def _known_model(cls, reference: ReferenceConfig) -> ReferenceConfig:
        if reference.model not in MODELS:
            raise ValueError(f"unknown model {reference.model!r}; valid names: {', '.join(sorted(MODELS))}")
        return reference

    def definition(self) -> dict[str, Any]:
        return {
            "schema": self.stream_schema.model_dump(mode="json"),
            "reference": self.reference.model_dump(mode="json"),
            # no limit of its own: left out, as before there were limits (so older streams compare equal)
            "distill": self.distill.model_dump(mode="json", exclude={WALL_TIME} if self.distill.wall_time_s is None else None),
            "licence": self.licence,
            "audit": self.audit.model_dump(mode="json") if self.audit else None,
        }


def stream_out(stream: Stream) -> wire.Stream:
    return from_row(wire.Stream, stream, stream_schema=stream.schema_doc)


def stream_filter(session: Session, name: str | None) -> int | None:
    """The id of a list endpoint's `?stream=` (404 for an unknown one), None when it was not given."""
    return find_stream(session, name).id if name is not None else None


def find_stream(session: Session, name: str) -> Stream:
    # A name the schema refuses cannot exist, and is not sent to the database (Postgres rejects NUL in text).
    stream = streams.by_name(session, name) if _VALID_NAME.match(name) else None
    if stream is None:
        raise Problem(404, f"no stream named {name!r}; create it with POST /streams")
    return stream


@router.post(
    "/streams",
    status_code=201,
    response_model=wire.Stream,
    responses={200: {"model": wire.Stream, "description": "the same definition was there already"}},
    dependencies=[Depends(require("ingest"))],
)
def create_stream(body: StreamIn, session: SessionDep, settings: SettingsDep, response: Response) -> wire.Stream:
    wall_time_s = body.distill.wall_time_s
    if wall_time_s is not None and wall_time_s > settings.job_max_wall_time_s:
        raise Problem(
            422,
            f"distill.{WALL_TIME} {wall_time_s:g} is more than this server's maximum of "
            f"{settings.job_max_wall_time_s:g} s (DIET_JOB_MAX_WALL_TIME_S)",
            title="Invalid stream definition",
        )
    wanted = body.definition()
    existing = streams.by_name(session, body.name)
    if existing is None:
        try:
            stream = streams.create(session, body.name, **wanted)
            session.commit()
            return stream_out(stream)
        except IntegrityError:
            session.rollback()  # created meanwhile by a concurrent request: compare with that one
            existing = find_stream(session, body.name)
    current = {
        "schema": existing.schema_doc, "reference": existing.reference, "distill": existing.distill,
        "licence": existing.licence, "audit": existing.audit,
    }  # fmt: skip
    if current != wanted:
        differs = sorted(k for k in wanted if wanted[k] != current[k])
        raise Problem(
            409, f"stream {body.name!r} exists with a different {' and '.join(differs)}; stream definitions are fixed"
        )
    response.status_code = 200
    return stream_out(existing)


@router.get("/streams", response_model=list[wire.Stream], dependencies=[Depends(require("read"))])
def list_streams(session: SessionDep) -> list[wire.Stream]:
    return [stream_out(s) for s in streams.list_all(session)]


@router.get("/streams/{name}", response_model=wire.Stream, dependencies=[Depends(require("read"))])
def get_stream(name: str, session: SessionDep) -> wire.Stream:
    return stream_out(find_stream(session, name))
