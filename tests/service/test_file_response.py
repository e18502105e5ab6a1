"""File bodies under a real uvicorn with the service's HTTP protocol: sendfile(2) on asyncio's loop (the ASGI
zero-copy send), reads in a thread under uvloop; the same bytes, ranges and keep-alive either way."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from service_support import free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.file_response import FileRangeResponse
from service.http_protocol import ZEROCOPY, with_head_timeout

SIZE = 3 * (1 << 20) + 12_345  # over a few 1 MiB reads, not a multiple of them


def _app(path: Path, offered: list[bool]) -> Starlette:
    async def file(request: Request) -> Response:
        offered.append(ZEROCOPY in request.scope.get("extensions", {}))
        first = int(request.query_params.get("first", 0))
        count = int(request.query_params.get("count", SIZE - first))
        headers = {"Content-Length": str(count), "ETag": '"x"'}
        return FileRangeResponse(str(path), first, count, 206 if count < SIZE else 200, headers, "application/x-test")

    return Starlette(routes=[Route("/file", file, methods=["GET", "HEAD"])])


@pytest.fixture(params=["asyncio", "uvloop"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, bytes, list[bool], str]]:
    data = os.urandom(SIZE)
    path = tmp_path / "blob"
    path.write_bytes(data)
    offered: list[bool] = []
    port = free_port()
    config = uvicorn.Config(_app(path, offered), host="127.0.0.1", port=port, log_config=None,
                            loop=request.param, http=with_head_timeout(5))  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", data, offered, request.param
    server.should_exit = True
    thread.join(10)


def test_file_bodies_whole_ranged_and_kept_alive(served):
    url, data, offered, loop = served
    with httpx.Client(base_url=url, timeout=30) as c:
        whole = c.get("/file")
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["content-length"] == str(SIZE) and whole.headers["etag"] == '"x"'
        part = c.get("/file", params={"first": 1_000_001, "count": 2_000_000})  # same connection, kept alive
        assert part.status_code == 206 and part.content == data[1_000_001:3_000_001]
        tail = c.get("/file", params={"first": SIZE - 1, "count": 1})
        assert tail.content == data[-1:]
        head = c.head("/file")
        assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(SIZE)
        assert c.get("/file").content == data  # the connection still in step after a HEAD
    # sendfile where the loop has it (asyncio's), reads in a thread where it does not (uvloop)
    assert set(offered) == {loop == "asyncio"}


def test_a_client_gone_mid_file_leaves_the_server_serving(served):
    url, data, _, _ = served
    with httpx.Client(base_url=url, timeout=30) as c, c.stream("GET", "/file") as cut:
        next(cut.iter_raw(1024))  # read a little, then drop the connection with most of the file unsent
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/file").content == data
