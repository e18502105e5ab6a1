"""Errors as RFC 9457 problem documents (`application/problem+json`).

Routes raise `Problem`; the handlers below also turn FastAPI's validation
errors, unknown routes and an unreachable database into the same shape, so a
client sees one error format for every 4xx and 5xx.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

MEDIA_TYPE = "application/problem+json"
log = logging.getLogger(__name__)


class ProblemDocument(BaseModel):
    """What every error answer holds (RFC 9457), plus fields of its own on some (`errors`, `columns`, `checks` ...)."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str


def _documented(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/ProblemDocument"}
    return {"model": ProblemDocument, "description": description, "content": {MEDIA_TYPE: {"schema": schema}}}


# Every route answers its errors so; routers are included with these (which also replaces FastAPI's 422 shape).
RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": _documented("the request cannot be served as sent: a problem document says why"),
    "5XX": _documented("the service, or something it depends on, failed: a problem document says which"),
}


class Problem(Exception):
    """An error the client can act on: status, a short title and a specific detail."""

    def __init__(
        self, status: int, detail: str, *, title: str | None = None, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title or HTTPStatus(status).phrase
        self.detail = detail
        self.headers = headers
        self.extra = extra


def problem_response(problem: Problem) -> JSONResponse:
    body = {"type": "about:blank", "title": problem.title, "status": problem.status, "detail": problem.detail}
    body.update(problem.extra)
    return JSONResponse(body, status_code=problem.status, media_type=MEDIA_TYPE, headers=problem.headers)


async def _on_problem(request: Request, exc: Problem) -> JSONResponse:
    return problem_response(exc)


async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
    if any(e["type"] == "json_invalid" for e in errors):
        where = errors[0]["loc"]
        return problem_response(
            Problem(400, f"the request body is not valid JSON (at {where})", title="Malformed JSON", errors=errors)
        )
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
    return problem_response(Problem(422, summary, title="Invalid request", errors=errors))


async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(Problem(exc.status_code, detail, headers=getattr(exc, "headers", None)))


async def _on_database_down(request: Request, exc: Exception) -> JSONResponse:
    log.error("database unavailable: %s", exc)
    return problem_response(
        Problem(503, "the registry database is unavailable; try again shortly", title="Service Unavailable")
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(Problem(500, "an unexpected error occurred; it has been logged"))


def install(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    # A database that cannot be reached is the server's trouble, and passing: 503, not 500.
    for exc in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(exc, _on_database_down)
    app.add_exception_handler(Exception, _on_unexpected)
