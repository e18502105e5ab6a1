"""Schemathesis against the running API's own OpenAPI description: every operation, with and without a
token, gets generated valid and invalid requests; no answer may be a 5xx or stray from the schema
(status, content type, body)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import BaseSchema, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from service_support import BOOTSTRAP_TOKEN

pytestmark = pytest.mark.fuzz

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 50  # per operation and mode (fewer in the cheaper cases): the module takes ~80 s on two busy cores


@pytest.fixture(scope="module")
def api_schema(service, ml100k_schema):
    # A stream that exists, so generated requests also reach past "no such stream".
    import httpx

    headers = {"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"}
    httpx.post(f"{service.base_url}/streams", json={"name": "fuzz", "schema": ml100k_schema}, headers=headers)
    return schemathesis.openapi.from_url(f"{service.base_url}/openapi.json")


@schemathesis.serializer("application/vnd.apache.parquet")
def _parquet_body(ctx, value) -> bytes:
    """Generated upload bodies go out as raw bytes (Parquet or, far more often, not)."""
    return value if isinstance(value, bytes) else str(value).encode()




def _fuzz(schema: BaseSchema, base_url: str, token: str | None, examples: int = EXAMPLES) -> None:
    """Every operation, valid and invalid requests; all failures are collected and reported together."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=examples, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck),
            )  # fmt: skip
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case) -> None:
                case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=30)

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE
            except (Exception, BaseExceptionGroup) as exc:  # the report names the operation and the request
                failures.append(f"{operation.label} ({mode}): {exc}")
    assert operations >= 15
    assert not failures, "\n\n".join(failures)


def test_without_a_token_no_server_errors_and_answers_fit_the_schema(api_schema, service):
    _fuzz(api_schema, service.base_url, None, examples=EXAMPLES // 2)  # refused at the door: fewer paths to try


def test_with_an_admin_token_no_server_errors_and_answers_fit_the_schema(api_schema, service):
    _fuzz(api_schema, service.base_url, BOOTSTRAP_TOKEN)


@pytest.mark.postgres
def test_on_postgres_with_an_admin_token(start_service, postgres_url, ml100k_schema):
    """Postgres refuses what SQLite takes (NUL in text, integers past 32 bits): those must be 4xx too."""
    pg_service, admin = start_service(database_url=postgres_url)
    assert admin.post("/streams", json={"name": "fuzz", "schema": ml100k_schema}).status_code == 201
    schema = schemathesis.openapi.from_url(f"{pg_service.base_url}/openapi.json")
    _fuzz(schema, pg_service.base_url, BOOTSTRAP_TOKEN, examples=EXAMPLES // 2)
