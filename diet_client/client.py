"""`DietClient`: one method per endpoint of the DIET service, typed answers, retries, verified transfers.

Every request is retried with exponential backoff when the service is unreachable or says
429 / 502 / 503 / 504 (honouring `Retry-After`). That is safe for every endpoint: creating a
stream, uploading a block and asking for a distill job are all idempotent on the service.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from diet_client.errors import ApiError, ChecksumMismatch, ServiceUnreachable, WaitTimeout
from diet_client.models import (
    Alias,
    Aliases,
    AliasMove,
    Artifact,
    Audit,
    AuditIn,
    Block,
    DatasetDiff,
    Deletion,
    GcReport,
    Delivery,
    EvaluationBlocks,
    Job,
    JobStatus,
    Liveness,
    Manifest,
    Page,
    PulledDataset,
    PulledFile,
    Readiness,
    Retention,
    Stream,
    Upload,
    Webhook,
    WebhookIn,
)
from diet_client.transfer import PartialFile, TransferProgress, file_chunks, sha256_of

RETRY_STATUSES = frozenset({429, 502, 503, 504})
PARQUET = "application/vnd.apache.parquet"
# A block is schema-checked as a whole before the service answers: give big uploads time for that.
UPLOAD_TIMEOUT = httpx.Timeout(30.0, read=600.0)

PULLED = "pulled.json"  # {"requested": "STREAM@prod", "version": "STREAM@v3"}, written by `pull`
M = TypeVar("M", bound=BaseModel)
PullProgress = Callable[[str, int, int], None]  # (file name, bytes done, bytes in all)


class DietClient:
    """A client of one DIET service.

    `url` is the service's base URL, `token` an API token (`diet tokens create`). `retries` is how
    many times a request is tried again after a transient failure, waiting `backoff_s`, then twice
    as long each time (at most `max_backoff_s`).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DietClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ health

    def health(self) -> bool:
        """Whether the process answers (`/healthz`)."""
        return Liveness.model_validate(self._request("GET", "/healthz").json()).status == "ok"

    def ready(self) -> Readiness:
        """Database, broker and storage reachable (`/readyz`); ApiError(503) names the one that is not."""
        return Readiness.model_validate(self._request("GET", "/readyz", retry=False).json())

    def metrics(self) -> str:
        """Prometheus text (`/metrics`, read scope)."""
        return self._request("GET", "/metrics").text

    # ------------------------------------------------------------------ streams

    def create_stream(
        self,
        name: str,
        schema: dict[str, Any],
        *,
        reference: dict[str, Any] | None = None,
        distill: dict[str, Any] | None = None,
        licence: str | None = None,
        audit: dict[str, Any] | None = None,
    ) -> Stream:
        """Create a stream (the same definition again is a no-op; another one under the name is a 409).

        `licence` is the data's (exports carry it); `audit` a standing audit policy (AuditPolicy's fields)."""
        body: dict[str, Any] = {"name": name, "schema": schema}
        if reference is not None:
            body["reference"] = reference
        if distill is not None:
            body["distill"] = distill
        if licence is not None:
            body["licence"] = licence
        if audit is not None:
            body["audit"] = audit
        return self._model(Stream, "POST", "/streams", json=body)

    def streams(self) -> list[Stream]:
        return [Stream.model_validate(s) for s in self._request("GET", "/streams").json()]

    def stream(self, name: str) -> Stream:
        return self._model(Stream, "GET", f"/streams/{name}")

    # ------------------------------------------------------------------ blocks

    def upload_block(
        self, stream: str, path: str | Path, *, stage: int | None = None, on_progress: TransferProgress | None = None
    ) -> Upload:
        """Stream a Parquet file to the service as the stream's next block (or `stage`)."""
        path = Path(path)
        params: dict[str, Any] = {"stream": stream}
        if stage is not None:
            params["stage"] = stage
        headers = {"Content-Type": PARQUET, "Content-Length": str(path.stat().st_size)}
        response = self._request(
            "POST", "/blocks", params=params, headers=headers, timeout=UPLOAD_TIMEOUT,
            body=lambda: file_chunks(path, on_progress),
        )  # fmt: skip
        return Upload(block=Block.model_validate(response.json()), created=response.status_code == 201)

    def blocks(self, stream: str | None = None, *, limit: int = 50, offset: int = 0) -> Page[Block]:
        return self._page(Block, "/blocks", {"stream": stream, "limit": limit, "offset": offset})

    def block(self, block_id: int) -> Block:
        return self._model(Block, "GET", f"/blocks/{block_id}")

    def delete_block(self, block_id: int) -> Deletion:
        """Soft-delete a block whose stage is distilled (admin); retired once its grace period is over."""
        return self._model(Deletion, "DELETE", f"/blocks/{block_id}")

    def restore_block(self, block_id: int) -> Block:
        return self._model(Block, "POST", f"/blocks/{block_id}/restore")

    # ------------------------------------------------------------------ jobs

    def distill(self, stream: str, stage: int, overrides: dict[str, Any] | None = None) -> Job:
        """Ask for stage `stage` to be distilled (asking again while it is queued or running returns that job)."""
        body = {"stream": stream, "stage": stage, "overrides": overrides or {}}
        return self._model(Job, "POST", "/jobs/distill", json=body)

    def jobs(
        self, stream: str | None = None, status: JobStatus | str | None = None, *, limit: int = 50, offset: int = 0
    ) -> Page[Job]:
        return self._page(Job, "/jobs", {"stream": stream, "status": status, "limit": limit, "offset": offset})

    def job(self, job_id: int) -> Job:
        return self._model(Job, "GET", f"/jobs/{job_id}")

    def cancel(self, job_id: int) -> Job:
        return self._model(Job, "DELETE", f"/jobs/{job_id}")

    def wait(
        self,
        job_id: int,
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll a job until it has succeeded, failed or been cancelled; returns it in that state.

        `on_progress` sees every state polled. WaitTimeout after `timeout_s` (None: no limit).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job.status.finished:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(job, timeout_s or 0.0)
            self._sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))

    # ------------------------------------------------------------------ audits

    def audit(
        self,
        version: str,
        *,
        pool: str = "p5",
        models: list[str] | None = None,
        blocks: dict[str, int] | None = None,
        candidate: dict[str, Any] | None = None,
        repeats: int = 1,
        seed: int = 0,
    ) -> Audit:
        """Ask the workers to audit a version: the pool's candidates on it and on full history, ranked and compared.

        `blocks` names the evaluation blocks by stage ({"subsequent", "valid", "test"}; each defaults to the
        next after the version's stage). Asking again while the same audit is queued or running returns it.
        """
        body = AuditIn(version=version, pool=pool, models=models, blocks=EvaluationBlocks(**(blocks or {})),
                       candidate=candidate or {}, repeats=repeats, seed=seed)  # fmt: skip
        return self._model(Audit, "POST", "/jobs/audit", json=body.model_dump(mode="json", exclude_none=True))

    def audits(
        self, stream: str | None = None, version: str | None = None, status: JobStatus | str | None = None,
        *, limit: int = 50, offset: int = 0,
    ) -> Page[Audit]:  # fmt: skip
        params = {"stream": stream, "version": version, "status": status, "limit": limit, "offset": offset}
        return self._page(Audit, "/jobs/audit", params)

    def audit_job(self, audit_id: int) -> Audit:
        return self._model(Audit, "GET", f"/jobs/audit/{audit_id}")

    def wait_audit(self, audit_id: int, *, poll_s: float = 1.0, timeout_s: float | None = None,
                   on_progress: Callable[[Audit], None] | None = None) -> Audit:  # fmt: skip
        """Poll an audit until it has succeeded, failed or been cancelled; WaitTimeout after `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            audit = self.audit_job(audit_id)
            if on_progress:
                on_progress(audit)
            if audit.status.finished:
                return audit
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(audit, timeout_s or 0.0)
            self._sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))

    # ------------------------------------------------------------------ webhooks

    def create_webhook(self, stream: str, url: str, events: list[str], secret: str) -> Webhook:
        """Have the stream's `events` POSTed to `url`, signed with `secret` (diet_client.signing.verify)."""
        body = WebhookIn(stream=stream, url=url, events=events, secret=secret)  # type: ignore[arg-type]
        return self._model(Webhook, "POST", "/webhooks", json=body.model_dump(mode="json"))

    def webhooks(self, stream: str | None = None, *, limit: int = 50, offset: int = 0) -> Page[Webhook]:
        return self._page(Webhook, "/webhooks", {"stream": stream, "limit": limit, "offset": offset})

    def webhook(self, webhook_id: int) -> Webhook:
        return self._model(Webhook, "GET", f"/webhooks/{webhook_id}")

    def delete_webhook(self, webhook_id: int) -> Webhook:
        return self._model(Webhook, "DELETE", f"/webhooks/{webhook_id}")

    def deliveries(
        self, webhook_id: int, status: str | None = None, *, limit: int = 50, offset: int = 0
    ) -> Page[Delivery]:
        """A webhook's deliveries, newest first, each with every attempt."""
        params = {"status": status, "limit": limit, "offset": offset}
        return self._page(Delivery, f"/webhooks/{webhook_id}/deliveries", params)

    # ------------------------------------------------------------------ datasets

    def datasets(self, stream: str | None = None, *, limit: int = 50, offset: int = 0) -> Page[Manifest]:
        """Versions, newest first."""
        return self._page(Manifest, "/datasets", {"stream": stream, "limit": limit, "offset": offset})

    def dataset(self, version: str) -> Manifest:
        """The manifest of `STREAM@vN`, `STREAM@latest`, `STREAM@ALIAS` or `STREAM@sha256:DIGEST`; its
        `version` is the concrete `STREAM@vN` the reference resolved to."""
        return self._model(Manifest, "GET", f"/datasets/{version}")

    def diff(self, a: str, b: str) -> DatasetDiff:
        """What changed from version `a` to `b`: rows by stage of origin, label balance, drift, config, lineage."""
        return self._model(DatasetDiff, "GET", f"/datasets/{a}/diff/{b}")

    def delete_dataset(self, version: str) -> Deletion:
        """Soft-delete a version (admin); ApiError(409) names what still needs it."""
        return self._model(Deletion, "DELETE", f"/datasets/{version}")

    def restore_dataset(self, version: str) -> Manifest:
        """Undo a deletion within its grace period (`STREAM@vN`)."""
        return self._model(Manifest, "POST", f"/datasets/{version}/restore")

    # ------------------------------------------------------------------ aliases

    def set_alias(self, stream: str, name: str, version: int) -> Alias:
        """Point `STREAM@name` at `STREAM@v{version}` (publish scope)."""
        return self._model(Alias, "PUT", f"/datasets/{stream}/aliases/{name}", json={"version": version})

    def remove_alias(self, stream: str, name: str) -> AliasMove:
        return self._model(AliasMove, "DELETE", f"/datasets/{stream}/aliases/{name}")

    def aliases(self, stream: str) -> Aliases:
        """The stream's aliases with their history (and removed aliases' history)."""
        return self._model(Aliases, "GET", f"/datasets/{stream}/aliases")

    # ------------------------------------------------------------------ retention

    def retention(self, stream: str) -> Retention:
        return self._model(Retention, "GET", f"/streams/{stream}/retention")

    def set_retention(
        self, stream: str, *, keep_last: int | None = None, keep_days: int | None = None, grace_s: int | None = None
    ) -> Retention:
        """Set the stream's retention policy (admin); None limits do not limit."""
        body: dict[str, Any] = {"keep_last": keep_last, "keep_days": keep_days}
        if grace_s is not None:
            body["grace_s"] = grace_s
        return self._model(Retention, "PUT", f"/streams/{stream}/retention", json=body)

    def gc(self, stream: str, *, dry_run: bool = False) -> GcReport:
        """Apply the retention policy and purge what is past its grace period (with `dry_run`: only say what would go)."""
        return self._model(GcReport, "POST", f"/streams/{stream}/gc", params={"dry_run": str(dry_run).lower()})

    def report(self, version: str) -> str:
        """The version's HTML report (lineage, sizes, label balance, loss curves)."""
        return self._request("GET", f"/datasets/{version}/report").text

    def download(
        self, version: str, name: str, dest: str | Path, *, on_progress: TransferProgress | None = None,
        artifact: Artifact | None = None,
    ) -> PulledFile:  # fmt: skip
        """Download one artifact to `dest`, resuming `dest.part` if an earlier download stopped, and check its sha256.

        A file already at `dest` with the right digest is kept as it is. Wrong bytes get one fresh
        download; ChecksumMismatch if those are wrong too.
        """
        dest = Path(dest)
        artifact = artifact or self.dataset(version).artifact(name)
        if dest.is_file() and dest.stat().st_size == artifact.bytes and sha256_of(dest) == artifact.sha256:
            if on_progress:
                on_progress(artifact.bytes, artifact.bytes)
            return PulledFile(name=name, path=dest, bytes=artifact.bytes, sha256=artifact.sha256,
                              resumed_from=artifact.bytes)  # fmt: skip
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = PartialFile(dest)
        resumed_from = part.size
        try:
            for fresh_start in (False, True):
                if fresh_start or part.size > artifact.bytes:
                    part.restart()
                self._fetch_into(part, artifact, on_progress)
                if part.sha256 == artifact.sha256:
                    part.complete()
                    return PulledFile(name=name, path=dest, bytes=artifact.bytes, sha256=artifact.sha256,
                                      resumed_from=resumed_from)  # fmt: skip
            part.discard()  # so a later download starts afresh
            raise ChecksumMismatch(name, artifact.sha256, part.sha256)
        finally:
            part.close()

    def pull(self, version: str, to: str | Path, *, on_progress: PullProgress | None = None) -> PulledDataset:
        """Download every file of a version into the folder `to`, each checked against the manifest.

        `@latest` is resolved once first, so all files come from the same version.
        """
        manifest = self.dataset(version)
        to = Path(to)
        files = []
        for artifact in manifest.artifacts:
            progress = (lambda done, total, n=artifact.name: on_progress(n, done, total)) if on_progress else None
            files.append(
                self.download(manifest.version, artifact.name, to / artifact.name, artifact=artifact,
                              on_progress=progress)  # fmt: skip
            )
        # What the reference resolved to, beside the files: load_dataset(to, version=<reference>) checks it.
        (to / PULLED).write_text(json.dumps({"requested": version, "version": manifest.version}) + "\n")
        return PulledDataset(version=manifest.version, directory=to, files=files)

    # ------------------------------------------------------------------ plumbing

    def _fetch_into(self, part: PartialFile, artifact: Artifact, on_progress: TransferProgress | None) -> None:
        """Bring `part` up to the artifact's size, asking for the rest with Range (and again after a dropped connection)."""
        etag = f'"{artifact.sha256}"'
        failures = 0
        while part.size < artifact.bytes:
            headers = {"Range": f"bytes={part.size}-", "If-Range": etag} if part.size else {}
            try:
                with self._download(artifact.url, headers) as response:
                    if response.status_code != 206:
                        part.restart()  # the whole file came back
                    if on_progress:
                        on_progress(part.size, artifact.bytes)
                    for block in response.iter_bytes():
                        part.write(block)
                        if on_progress:
                            on_progress(part.size, artifact.bytes)
                if part.size < artifact.bytes:
                    raise httpx.RemoteProtocolError("the download ended early")
            except httpx.TransportError as exc:  # dropped mid-file: ask for the rest
                failures += 1
                if failures > self.retries:
                    raise ServiceUnreachable(f"downloading {artifact.url}: {exc}") from exc
                self._sleep(self._delay(failures - 1, None))

    @contextmanager
    def _download(self, url: str, headers: dict[str, str]) -> Iterator[httpx.Response]:
        """The artifact's bytes: from the service, or from where it redirects (a presigned object-store
        URL, DIET_ARTIFACT_REDIRECT). The redirect's target gets the Range only: not the token, which is
        the service's, nor If-Range, since the store's ETag is not the sha256 (checked once the file is whole)."""
        with self._stream("GET", url, headers=headers) as response:
            if not response.is_redirect:
                yield response
                return
            location = str(response.url.join(response.headers["location"]))
        ranged = {k: v for k, v in headers.items() if k == "Range"}
        redirected = self._http.send(httpx.Request("GET", location, headers=ranged), stream=True)
        try:
            if redirected.is_error:  # an expired URL, a store hiccup: ask the service for a fresh one
                raise httpx.RemoteProtocolError(f"the object store answered {redirected.status_code}")
            yield redirected
        finally:
            redirected.close()

    def _model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        return model.model_validate(self._request(method, path, **kwargs).json())

    def _page(self, model: type[M], path: str, params: dict[str, Any]) -> Page[M]:
        params = {k: (str(v) if isinstance(v, enum.Enum) else v) for k, v in params.items() if v is not None}
        return Page[model].model_validate(self._request("GET", path, params=params).json())  # type: ignore[valid-type]

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        body: Callable[[], Iterator[bytes]] | None = None,
        timeout: httpx.Timeout | None = None,
        retry: bool = True,
    ) -> httpx.Response:
        def build() -> httpx.Request:
            return self._http.build_request(
                method, path, params=params, json=json, headers=headers,
                content=body() if body else None,  # a fresh body per attempt
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )  # fmt: skip

        return self._send(build, stream=False, retry=retry)

    @contextmanager
    def _stream(self, method: str, path: str, headers: dict[str, str]) -> Iterator[httpx.Response]:
        """A response whose body is read by the caller, closed afterwards."""
        response = self._send(lambda: self._http.build_request(method, path, headers=headers), stream=True)
        try:
            yield response
        finally:
            response.close()

    def _send(self, build: Callable[[], httpx.Request], *, stream: bool, retry: bool = True) -> httpx.Response:
        """Send, retrying transient failures; raise ApiError on a problem answer, ServiceUnreachable on silence."""
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            request = build()
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if last:
                    raise ServiceUnreachable(f"{request.method} {request.url}: {type(exc).__name__}: {exc}") from exc
                self._sleep(self._delay(attempt, None))
                continue
            if response.status_code in RETRY_STATUSES and not last:
                response.close()
                self._sleep(self._delay(attempt, response.headers.get("retry-after")))
                continue
            if response.is_error:
                response.read()
                response.close()
                raise _api_error(response)
            return response
        raise AssertionError("unreachable")  # the loop returns or raises

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after and retry_after.strip().isdigit():
            return min(float(retry_after), self.max_backoff_s)
        return min(self.backoff_s * 2**attempt, self.max_backoff_s)


def _api_error(response: httpx.Response) -> ApiError:
    """The problem document of an error answer (or what can be said of a body that is not one)."""
    try:
        problem = response.json()
    except json.JSONDecodeError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    title = str(problem.get("title") or response.reason_phrase or "Error")
    detail = str(problem.get("detail") or response.text[:500] or f"HTTP {response.status_code}")
    return ApiError(response.status_code, title, detail, problem)
