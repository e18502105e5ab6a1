"""Streaming file transfer pieces: an upload body read in chunks, and a resumable, hashed download file.

Neither holds a whole file in memory; both report progress as (bytes done, bytes in all).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

CHUNK = 1 << 20

TransferProgress = Callable[[int, int], None]


def file_chunks(path: Path, on_progress: TransferProgress | None = None, chunk: int = CHUNK) -> Iterator[bytes]:
    """The file's bytes, a chunk at a time, reporting after each."""
    total = path.stat().st_size
    sent = 0
    if on_progress:
        on_progress(0, total)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            sent += len(block)
            yield block
            if on_progress:
                on_progress(sent, total)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


class PartialFile:
    """`<dest>.part`: bytes of a download so far, hashed as they arrive, renamed to `dest` once complete.

    A `.part` left by an interrupted download is picked up where it stopped (its bytes are hashed
    again on open), which is what makes `pull` resumable across runs.
    """

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.path = dest.with_name(dest.name + ".part")
        self._digest = hashlib.sha256()
        self.size = 0
        if self.path.exists():
            with open(self.path, "rb") as fh:
                while block := fh.read(CHUNK):
                    self._digest.update(block)
                    self.size += len(block)
        self._fh = open(self.path, "ab")

    def restart(self) -> None:
        """Drop what is there (the server sent the whole file, or the bytes were wrong)."""
        self._fh.seek(0)
        self._fh.truncate()
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, block: bytes) -> None:
        self._fh.write(block)
        self._digest.update(block)
        self.size += len(block)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def complete(self) -> None:
        self._fh.close()
        self.path.replace(self.dest)

    def close(self) -> None:
        self._fh.close()

    def discard(self) -> None:
        """Close and remove it (its bytes are known to be wrong)."""
        self._fh.close()
        self.path.unlink(missing_ok=True)
