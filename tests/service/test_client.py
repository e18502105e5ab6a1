"""The Python client: its models are the service's answers, it retries what is transient, and its downloads
resume and verify. Transport behaviour runs on httpx's MockTransport; the rest against the real app."""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import get_args

import httpx
import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel
from service_support import BOOTSTRAP_TOKEN

from diet_client import ApiError, Artifact, ChecksumMismatch, DietClient, JobStatus, ServiceUnreachable, WaitTimeout
from service import routes

# --------------------------------------------------------------------------- the contract


def _wire_classes(annotation: object) -> Iterator[type]:
    """The pydantic classes an answer is made of: Page[Job] -> Page[Job] and Job, list[Stream] -> Stream."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        for arg in annotation.__pydantic_generic_metadata__["args"]:
            yield from _wire_classes(arg)
    for arg in get_args(annotation):
        yield from _wire_classes(arg)


def test_every_answer_of_the_service_is_a_client_model():
    """One definition of each wire model: the service answers with diet_client.models' classes, not copies."""
    routers = [importlib.import_module(f"service.routes.{m.name}").router for m in pkgutil.iter_modules(routes.__path__)]
    answers = {route.path + " " + ",".join(sorted(route.methods)): route.response_model
               for router in routers for route in router.routes
               if isinstance(route, APIRoute) and route.response_model is not None}  # fmt: skip
    assert len(answers) >= 12  # every JSON endpoint but /healthz
    for endpoint, model in answers.items():
        classes = list(_wire_classes(model))
        assert classes, f"{endpoint} answers with {model!r}, not a model"
        for cls in classes:
            origin = cls.__pydantic_generic_metadata__["origin"] or cls
            assert origin.__module__ == "diet_client.models", f"{endpoint} answers with {origin.__module__}.{origin.__name__}"


# --------------------------------------------------------------------------- retries (MockTransport)

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def mocked() -> Iterator[Callable[..., tuple[DietClient, list[httpx.Request], list[float]]]]:
    """mocked(handler, **client options) -> (client, requests seen, sleeps taken)."""
    made: list[DietClient] = []

    def make(handler: Handler, **options: object) -> tuple[DietClient, list[httpx.Request], list[float]]:
        seen: list[httpx.Request] = []
        sleeps: list[float] = []

        def record(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return handler(request)

        client = DietClient("http://diet.test", "tok", transport=httpx.MockTransport(record), sleep=sleeps.append,
                            **options)  # type: ignore[arg-type]  # fmt: skip
        made.append(client)
        return client, seen, sleeps

    yield make
    for client in made:
        client.close()


def problem(status: int, detail: str, **headers: str) -> httpx.Response:
    body = {"type": "about:blank", "title": httpx.codes.get_reason_phrase(status), "status": status, "detail": detail}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json", **headers})


def test_transient_answers_are_retried_with_backoff_and_retry_after(mocked):
    answers = iter([problem(503, "db blip"), problem(429, "slow down", **{"Retry-After": "3"}),
                    httpx.Response(200, json={"status": "ok"})])  # fmt: skip
    client, seen, sleeps = mocked(lambda request: next(answers), backoff_s=0.5)
    assert client.health() is True
    assert len(seen) == 3 and sleeps == [0.5, 3.0]
    assert seen[0].headers["authorization"] == "Bearer tok"


def test_retries_run_out_into_the_last_answer(mocked):
    client, seen, sleeps = mocked(lambda request: problem(503, "the job queue is unavailable"), retries=2)
    with pytest.raises(ApiError) as caught:
        client.jobs()
    assert caught.value.status == 503 and not caught.value.is_client_error
    assert caught.value.detail == "the job queue is unavailable"
    assert len(seen) == 3 and sleeps == [0.5, 1.0]


def test_refusals_are_not_retried(mocked):
    client, seen, _ = mocked(lambda request: problem(409, "stage 5 has no block"))
    with pytest.raises(ApiError) as caught:
        client.distill("s", 5)
    assert (caught.value.status, caught.value.title, caught.value.detail) == (409, "Conflict", "stage 5 has no block")
    assert len(seen) == 1 and caught.value.is_client_error


def test_silence_is_retried_then_unreachable(mocked):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client, seen, sleeps = mocked(refuse, retries=3, backoff_s=1.0, max_backoff_s=3.0)
    with pytest.raises(ServiceUnreachable, match="connection refused"):
        client.streams()
    assert len(seen) == 4 and sleeps == [1.0, 2.0, 3.0]


# --------------------------------------------------------------------------- downloads (MockTransport)

DATA = secrets.token_bytes(300_000)
GOOD = Artifact(name="synthetic.parquet", bytes=len(DATA), sha256=hashlib.sha256(DATA).hexdigest(),
                url="/datasets/s@v1/files/synthetic.parquet")  # fmt: skip


def serve_bytes(data: bytes, drop_first_after: int | None = None) -> Handler:
    """A file server with Range support; the first answer may break off after some bytes."""
    calls = {"n": 0}

    def handle(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        start = 0
        status = 200
        headers = {"ETag": f'"{GOOD.sha256}"'}
        wanted = request.headers.get("range")
        if wanted:
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if drop_first_after is not None and calls["n"] == 1:

            def broken() -> Iterator[bytes]:
                yield body[:drop_first_after]
                raise httpx.ReadError("connection reset by peer")

            return httpx.Response(status, headers=headers, content=broken())
        return httpx.Response(status, headers=headers, content=body)

    return handle


def test_a_download_resumes_from_the_part_file(mocked, tmp_path):
    dest = tmp_path / "synthetic.parquet"
    (tmp_path / "synthetic.parquet.part").write_bytes(DATA[:100_000])
    client, seen, _ = mocked(serve_bytes(DATA))
    progress: list[tuple[int, int]] = []
    pulled = client.download("s@v1", GOOD.name, dest, artifact=GOOD, on_progress=lambda *p: progress.append(p))
    assert dest.read_bytes() == DATA and not (tmp_path / "synthetic.parquet.part").exists()
    assert [r.headers.get("range") for r in seen] == ["bytes=100000-"]
    assert seen[0].headers["if-range"] == f'"{GOOD.sha256}"'
    assert pulled.resumed_from == 100_000 and pulled.sha256 == GOOD.sha256
    assert progress[0] == (100_000, len(DATA)) and progress[-1] == (len(DATA), len(DATA))


def test_a_dropped_download_continues_where_it_stopped(mocked, tmp_path):
    client, seen, sleeps = mocked(serve_bytes(DATA, drop_first_after=120_000))
    client.download("s@v1", GOOD.name, tmp_path / "f", artifact=GOOD)
    assert (tmp_path / "f").read_bytes() == DATA
    assert [r.headers.get("range") for r in seen] == [None, "bytes=120000-"] and sleeps == [0.5]


def test_wrong_bytes_get_one_fresh_download(mocked, tmp_path):
    (tmp_path / "f.part").write_bytes(b"x" * 1000)  # not the file's first bytes
    client, seen, _ = mocked(serve_bytes(DATA))
    pulled = client.download("s@v1", GOOD.name, tmp_path / "f", artifact=GOOD)
    assert (tmp_path / "f").read_bytes() == DATA and pulled.sha256 == GOOD.sha256
    assert [r.headers.get("range") for r in seen] == ["bytes=1000-", None]


def test_a_file_that_never_matches_its_digest_is_refused(mocked, tmp_path):
    client, seen, _ = mocked(serve_bytes(bytes(reversed(DATA))))
    with pytest.raises(ChecksumMismatch, match="synthetic.parquet"):
        client.download("s@v1", GOOD.name, tmp_path / "f", artifact=GOOD)
    assert len(seen) == 2 and not (tmp_path / "f").exists() and not (tmp_path / "f.part").exists()


def test_a_complete_file_is_not_downloaded_again(mocked, tmp_path):
    (tmp_path / "f").write_bytes(DATA)
    client, seen, _ = mocked(serve_bytes(DATA))
    assert client.download("s@v1", GOOD.name, tmp_path / "f", artifact=GOOD).resumed_from == len(DATA)
    assert seen == []


# --------------------------------------------------------------------------- against the service (no worker)


@pytest.fixture
def diet(service) -> Iterator[DietClient]:
    with DietClient(service.base_url, BOOTSTRAP_TOKEN, backoff_s=0.05) as c:
        yield c


def test_streams_blocks_and_jobs_through_the_client(diet, ml100k_dir, ml100k_schema):
    name = f"c_{secrets.token_hex(4)}"
    stream = diet.create_stream(name, ml100k_schema, distill={"ratio": 0.01})
    assert stream.name == name and stream.stream_schema["labels"] == ["like", "love"] and stream.distill["ratio"] == 0.01
    assert diet.create_stream(name, ml100k_schema, distill={"ratio": 0.01}).id == stream.id  # same definition: fine
    assert name in [s.name for s in diet.streams()] and diet.stream(name).id == stream.id

    path: Path = ml100k_dir / "b1.parquet"
    progress: list[tuple[int, int]] = []
    upload = diet.upload_block(name, path, on_progress=lambda *p: progress.append(p))
    assert upload.created and upload.block.stage == 1 and upload.block.rows == 17008
    assert upload.block.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert progress[0] == (0, path.stat().st_size) and progress[-1] == (path.stat().st_size,) * 2
    again = diet.upload_block(name, path)
    assert not again.created and again.block.id == upload.block.id
    page = diet.blocks(name)
    assert page.total == 1 and page.items[0] == diet.block(upload.block.id)

    job = diet.distill(name, 1, {"outer_iters": 5})
    assert job.status == JobStatus.queued and job.config["outer_iters"] == 5 and job.config["ratio"] == 0.01
    with pytest.raises(WaitTimeout) as waited:  # no worker here: it stays queued
        diet.wait(job.id, poll_s=0.05, timeout_s=0.3)
    assert waited.value.job.status == JobStatus.queued
    assert diet.cancel(job.id).status == JobStatus.cancelled
    seen: list[JobStatus] = []
    assert diet.wait(job.id, on_progress=lambda j: seen.append(j.status)).status == JobStatus.cancelled
    assert seen == [JobStatus.cancelled]
    assert [j.id for j in diet.jobs(name, "cancelled").items] == [job.id]
    assert diet.datasets(name).total == 0


def test_service_refusals_come_back_as_problems(diet, service):
    with pytest.raises(ApiError) as missing:
        diet.dataset("nope@latest")
    assert missing.value.status == 404 and "'nope'" in missing.value.detail
    with pytest.raises(ApiError) as no_report:
        diet.report("nope@v1")
    assert no_report.value.status == 404
    with pytest.raises(ApiError) as malformed:
        diet.dataset("not a version")
    assert malformed.value.status == 422 and malformed.value.title == "Invalid version"
    with DietClient(service.base_url) as anonymous:
        assert anonymous.health() and anonymous.ready().checks == {"database": "ok", "broker": "ok", "storage": "ok"}
        with pytest.raises(ApiError) as unauthorised:
            anonymous.streams()
    assert unauthorised.value.status == 401
    assert "diet_http_requests" in diet.metrics()


def test_webhooks_and_audits_through_the_client(diet, ml100k_schema):
    name = f"c_{secrets.token_hex(4)}"
    stream = diet.create_stream(name, ml100k_schema, licence="CC-BY-4.0", audit={"every": 3, "threshold": 0.5})
    assert stream.licence == "CC-BY-4.0" and stream.audit["every"] == 3 and stream.audit["threshold"] == 0.5
    hook = diet.create_webhook(name, "http://127.0.0.1:9/hook", ["audit.alarm", "version.created"], "x" * 16)
    assert hook.stream == name and hook.events == ["audit.alarm", "version.created"]
    assert diet.webhook(hook.id) == hook and hook in diet.webhooks(name).items
    assert diet.deliveries(hook.id).total == 0
    assert diet.delete_webhook(hook.id) == hook
    with pytest.raises(ApiError) as refused:
        diet.webhook(hook.id)
    assert refused.value.status == 404
    assert diet.audits(name).total == 0
    with pytest.raises(ApiError) as refused:
        diet.audit(f"{name}@v1", models=["dcn", "dcnv2"])
    assert refused.value.status == 404 and "no dataset version" in refused.value.detail
