"""Responses whose body is (part of) a local file: handed to the kernel where the server can, read otherwise.

Under `service.http_protocol.HttpProtocol` on asyncio's loop the open file goes to the
server as ASGI's zero-copy send (`sendfile(2)`: no read into Python, no worker thread per
chunk). Under any other server the bytes are read in 1 MiB pieces in a worker thread.
The caller sets the status, `Content-Length` and every other header (ETag, Range).
"""

from __future__ import annotations

import os

import anyio.to_thread
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.http_protocol import ZEROCOPY

CHUNK = 1 << 20


class FileRangeResponse(Response):
    """`count` bytes of the file at `path` from `offset`; the headers must already hold its Content-Length."""

    def __init__(
        self, path: str, offset: int, count: int, status_code: int, headers: dict[str, str], media_type: str
    ) -> None:
        super().__init__(status_code=status_code, headers=headers, media_type=media_type)
        self.path = path
        self.offset = offset
        self.count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Opened before the head goes out: a missing file is still an error answer, not a cut response.
        with open(self.path, "rb") as file:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if ZEROCOPY in scope.get("extensions", {}):
                await send({"type": ZEROCOPY, "file": file, "offset": self.offset, "count": self.count})
                return
            position, end = self.offset, self.offset + self.count
            while position < end:
                chunk = await anyio.to_thread.run_sync(os.pread, file.fileno(), min(CHUNK, end - position), position)
                if not chunk:
                    raise RuntimeError(f"{self.path} ended {end - position} bytes early")
                position += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": position < end})
