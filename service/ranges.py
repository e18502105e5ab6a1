"""HTTP byte ranges (RFC 9110 §14): one range per request; others get the whole file."""

from __future__ import annotations

import re

from service.problems import Problem

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive, or None to send everything (no header, or one we do not serve)."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None  # multiple ranges or another unit: a server may ignore Range
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        suffix = int(last)
        if suffix == 0:
            raise _unsatisfiable(size)
        return max(size - suffix, 0), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # not a valid range: ignored, like any other we do not serve
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(int(last), size - 1) if last else size - 1


def _unsatisfiable(size: int) -> Problem:
    return Problem(416, f"the file has {size} bytes", headers={"Content-Range": f"bytes */{size}"})
