"""uvicorn's HTTP protocol with a deadline on request heads (slowloris), and zero-copy file bodies.

uvicorn closes idle keep-alive connections, but a connection that opens and sends
nothing, or sends a request line and then its headers a byte at a time, is kept
forever, and no ASGI middleware sees it (the app is called once the head is in).
Here a request head must be complete within `DIET_BODY_TIMEOUT_S` of the
connection opening or of the request's first byte; otherwise the client gets a
408 problem document and the connection is closed. (Bodies are timed by
`service.limits.BodyGuard`.)

It also speaks ASGI's zero-copy send extension (`http.response.zerocopysend`): a
response may hand over an open file, offset and count, and the kernel copies it from
the page cache to the socket (`sendfile`), with no read into Python and no worker
thread. Only asyncio's own event loop implements `loop.sendfile` (uvloop does not),
so the extension is offered only there (`--loop asyncio`); elsewhere file responses
read and send the file themselves (`service.file_response`).

Deployments name it to uvicorn: `uvicorn --http service.http_protocol:HttpProtocol --loop asyncio ...`;
`diet serve` uses it itself.
"""

from __future__ import annotations

import asyncio
import json
import os
from asyncio import TimerHandle
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.problems import MEDIA_TYPE
from service.settings import get_settings

ZEROCOPY = "http.response.zerocopysend"


class HttpProtocol(HttpToolsProtocol):
    head_timeout_s: float | None = None  # None: DIET_BODY_TIMEOUT_S from the environment
    _head_timer: TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()  # the first request's head must come, too

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._start_head_timer()

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:  # type: ignore[override]
        if _loop_sends_files(self.loop, self.transport):
            cycle.scope.setdefault("extensions", {})[ZEROCOPY] = {}  # type: ignore[typeddict-unknown-key]
            plain_send = cycle.send

            async def send(message: Any) -> None:
                if message["type"] == ZEROCOPY:
                    await self._send_file(cycle, message)
                else:
                    await plain_send(message)

            cycle.send = send  # type: ignore[method-assign]
        super()._start_asgi_task(cycle, app)

    async def _send_file(self, cycle: RequestResponseCycle, message: dict[str, Any]) -> None:
        """A body message whose bytes are `count` bytes of `file` from `offset`, sent by the kernel."""
        if not cycle.response_started or cycle.response_complete or cycle.chunked_encoding is not False:
            raise RuntimeError(f"'{ZEROCOPY}' needs a started response with a Content-Length, and no body yet")
        file = message["file"]
        offset = message.get("offset") or 0
        count = message.get("count")
        if count is None:
            count = os.fstat(file.fileno()).st_size - offset
        if count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        if cycle.scope["method"] == "HEAD":
            count = cycle.expected_content_length = 0
        if cycle.disconnected:
            return
        if count:
            try:
                # Waits for what is buffered (the head) to go out, then sendfile(2)s the range.
                sent = await self.loop.sendfile(self.transport, file, offset, count)
            except (ConnectionError, OSError, RuntimeError):  # the client went away (RuntimeError: transport closing)
                cycle.disconnected = True
                self.transport.close()
                return
            cycle.expected_content_length -= sent
        if message.get("more_body", False):
            return
        if cycle.expected_content_length != 0:
            raise RuntimeError("Response content shorter than Content-Length")
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _start_head_timer(self) -> None:
        seconds = self.head_timeout_s if self.head_timeout_s is not None else get_settings().body_timeout_s
        self._head_timer = self.loop.call_later(seconds, self._head_timed_out, seconds)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self, seconds: float) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        detail = f"the request head did not arrive within {seconds:g} s (DIET_BODY_TIMEOUT_S)"
        body = json.dumps({"type": "about:blank", "title": "Request Timeout", "status": 408, "detail": detail})
        head = (
            f"HTTP/1.1 408 Request Timeout\r\ncontent-type: {MEDIA_TYPE}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body.encode())
        self.transport.close()


def _loop_sends_files(loop: asyncio.AbstractEventLoop, transport: asyncio.BaseTransport) -> bool:
    """Whether `loop.sendfile` works on this transport without falling back to reads (asyncio's selector loop
    over a plain socket: uvloop raises NotImplementedError, TLS transports cannot sendfile)."""
    from asyncio import constants

    return isinstance(loop, asyncio.BaseEventLoop) and (
        getattr(transport, "_sendfile_compatible", None) is constants._SendfileMode.TRY_NATIVE
    )


def with_head_timeout(seconds: float) -> type[HttpProtocol]:
    """The protocol with its deadline given (in-process servers; the class itself reads the environment)."""
    return type("HttpProtocol", (HttpProtocol,), {"head_timeout_s": seconds})
