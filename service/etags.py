"""Conditional reads: every JSON answer to a GET carries an ETag, and `If-None-Match` with it gets 304.

Clients that poll (a training job waiting for `STREAM@latest`, a dashboard listing
jobs) then get a bodiless 304 until something changed. The ETag is the sha256 of the
body, so it changes exactly when the answer does; downloads set their own (the
artifact's sha256) and are left as they are.
"""

from __future__ import annotations

import hashlib

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (weak comparison, RFC 9110 §13.1.2) or is `*`."""
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags


def body_etag(body: bytes) -> str:
    return f'"{hashlib.sha256(body).hexdigest()}"'


class JsonETags:
    """ASGI middleware: a 200 JSON answer to a GET without an ETag of its own gets one (and `Cache-Control:
    private, no-cache`: reuse it, but ask again first); a request whose If-None-Match names it gets 304."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if_none_match = Headers(scope=scope).get("if-none-match")
        held: Message | None = None  # the response head, kept until the whole body is in
        parts: list[bytes] = []

        async def tagging_send(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = Headers(raw=message.get("headers", []))
                json_answer = headers.get("content-type", "").startswith("application/json")
                if message["status"] == 200 and json_answer and "etag" not in headers:
                    held = message
                    return
            elif held is not None and message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = b"".join(parts)
                etag = body_etag(body)
                start, held = held, None
                headers = MutableHeaders(raw=list(start.get("headers", [])))
                headers["etag"] = etag
                headers.setdefault("cache-control", "private, no-cache")
                if etag_matches(if_none_match, etag):
                    kept = [(k, v) for k, v in headers.raw if k in (b"etag", b"cache-control", b"vary")]
                    await send({"type": "http.response.start", "status": 304, "headers": kept})
                    await send({"type": "http.response.body", "body": b""})
                    return
                await send({**start, "headers": headers.raw})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, tagging_send)
