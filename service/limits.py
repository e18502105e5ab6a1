"""Request bodies are bounded in size and in patience.

Every body but a block upload (which streams to storage under its own, larger,
`DIET_MAX_UPLOAD_BYTES`) may hold at most `DIET_MAX_JSON_BYTES`: the JSON routes
parse their body in memory. And every body must keep arriving: a client that
announces a body and then stalls for `DIET_BODY_TIMEOUT_S` is answered 408 and
its connection closed, so slow or silent clients cannot hold the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.problems import Problem, problem_response


class BodyTooLarge(HTTPException):
    """Raised from `receive` while the app reads a body; FastAPI and the problem handlers pass it on as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes (DIET_MAX_JSON_BYTES)")


class BodyTimeout(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(
            408, f"the request body stopped arriving: nothing came for {seconds:g} s (DIET_BODY_TIMEOUT_S)"
        )


class BodyGuard:
    """ASGI middleware: a size limit on bodies (except where `exempt(scope)`) and a timeout between their chunks."""

    def __init__(self, app: ASGIApp, max_bytes: int, idle_timeout_s: float, exempt: Callable[[Scope], bool]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout_s = idle_timeout_s
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = None if self.exempt(scope) else self.max_bytes
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        has_body = (declared.isdigit() and int(declared) > 0) or "chunked" in headers.get("transfer-encoding", "")
        if limit is not None and declared.isdigit() and int(declared) > limit:
            # Refused before a byte of it is read; the server closes the connection, whose body is unread.
            problem = Problem(
                413, f"Content-Length {declared} is over the limit of {limit} bytes (DIET_MAX_JSON_BYTES)",
                headers={"Connection": "close"},
            )  # fmt: skip
            await problem_response(problem)(scope, receive, send)
            return

        received = 0
        body_done = False

        async def guarded_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body, `receive` only waits for a disconnect: no deadline then
                return await receive()
            try:
                # asyncio.timeout, not wait_for: no task per body chunk (a 1 GB upload comes in ~16,000 chunks)
                async with asyncio.timeout(self.idle_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.idle_timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if limit is not None and received > limit:
                    raise BodyTooLarge(limit)
            else:
                body_done = True
            return message

        async def closing_send(message: Message) -> None:
            # Answered before its body was read (refused, timed out): the rest of the body is not waited for.
            if message["type"] == "http.response.start" and has_body and not body_done:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, guarded_receive, closing_send)
