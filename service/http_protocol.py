"""uvicorn's HTTP protocol with a deadline on request heads (slowloris).

uvicorn closes idle keep-alive connections, but a connection that opens and sends
nothing, or sends a request line and then its headers a byte at a time, is kept
forever, and no ASGI middleware sees it (the app is called once the head is in).
Here a request head must be complete within `DIET_BODY_TIMEOUT_S` of the
connection opening or of the request's first byte; otherwise the client gets a
408 problem document and the connection is closed. (Bodies are timed by
`service.limits.BodyGuard`.)

Deployments name it to uvicorn: `uvicorn --http service.http_protocol:HttpProtocol ...`;
`diet serve` uses it itself.
"""

from __future__ import annotations

import asyncio
import json
from asyncio import TimerHandle

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.problems import MEDIA_TYPE
from service.settings import get_settings


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


def with_head_timeout(seconds: float) -> type[HttpProtocol]:
    """The protocol with its deadline given (in-process servers; the class itself reads the environment)."""
    return type("HttpProtocol", (HttpProtocol,), {"head_timeout_s": seconds})
