"""Blob storage: one small interface over fsspec, rooted at a URL.

A local directory by default, any fsspec URL (`s3://bucket/prefix` with the
`s3` extra) when configured. Keys are relative POSIX paths made of plain
segments; nothing can name a file outside the root. New blobs are written
under `tmp/` while their sha256 and size are counted, then renamed into place,
so a reader never sees half a file under a real key. A process killed while
writing leaves its temporary blob behind; `sweep_tmp` deletes those that have
not been touched for a while (the API does it at start and periodically).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from datetime import datetime

import fsspec
from fsspec.implementations.local import LocalFileSystem

CHUNK = 1 << 20
MARKER = "diet-storage.txt"
TMP = "tmp"
_SEGMENT = re.compile(r"[A-Za-z0-9_.=@-]+")


class UnsafeKey(ValueError):
    """A key that is empty, absolute, or walks out of the storage root."""


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class Blob:
    key: str
    sha256: str
    bytes: int


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or not _SEGMENT.fullmatch(p) for p in parts):
        raise UnsafeKey(f"not a safe storage key: {key!r}")
    return key


class BlobWriter:
    """Writes one temporary blob, hashing and counting bytes as they pass."""

    def __init__(self, storage: Storage, key: str, max_bytes: int | None) -> None:
        self.key = key
        self.bytes = 0
        self._storage = storage
        self._max = max_bytes
        self._hash = hashlib.sha256()
        self._file = storage.open(key, "wb")
        self._storer: ThreadPoolExecutor | None = None  # started by the first write_all

    def write(self, chunk: bytes) -> None:
        if self._max is not None and self.bytes + len(chunk) > self._max:
            raise TooLarge(self._max)
        self._hash.update(chunk)
        self._file.write(chunk)
        self.bytes += len(chunk)

    def write_all(self, chunks: list[bytes]) -> None:
        """Write several chunks: stored by a thread of this writer's own while this one hashes them (both
        release the GIL, so on two cores they take the time of the slower, not of both)."""
        size = sum(map(len, chunks))
        if self._max is not None and self.bytes + size > self._max:
            raise TooLarge(self._max)
        if self._storer is None:
            self._storer = ThreadPoolExecutor(1, thread_name_prefix="blob-writer")
        stored = self._storer.submit(lambda: [self._file.write(chunk) for chunk in chunks])
        try:
            for chunk in chunks:
                self._hash.update(chunk)
        finally:
            stored.result()
        self.bytes += size

    def close(self) -> Blob:
        self._stop_storer()
        self._file.close()
        return Blob(self.key, self._hash.hexdigest(), self.bytes)

    def discard(self) -> None:
        """Drop the temporary blob, whatever state the write is in."""
        try:
            self._stop_storer()
            self._file.close()
        finally:
            self._storage.delete(self.key)

    def _stop_storer(self) -> None:
        if self._storer is not None:
            self._storer.shutdown(wait=True)
            self._storer = None


class Storage:
    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        self.url = url
        options = dict(options or {})
        if "://" in url and not url.startswith("file://"):
            # Other processes (the API, the workers) write to the same bucket: a listing cached here
            # would hide their blobs, or show ones they have renamed away.
            options.setdefault("use_listings_cache", False)
        self.fs, root = fsspec.core.url_to_fs(url, **options)
        self.root = root.rstrip("/")
        self.fs.makedirs(self.root, exist_ok=True)
        self._real_root = os.path.realpath(self.root) if self.is_local else ""
        # Object stores have no empty folders: a marker makes the root something that can be checked.
        if not self.exists(MARKER):
            self.put([b"the root of a DIET service's blobs\n"], MARKER)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, key: str) -> str:
        path = f"{self.root}/{check_key(key)}"
        # A symlink planted inside a local root must not lead a plain-looking key outside it.
        if self.is_local and not os.path.realpath(path).startswith(self._real_root + os.sep):
            raise UnsafeKey(f"storage key {key!r} leads outside the storage root")
        return path

    def open(self, key: str, mode: str = "rb") -> BinaryIO:
        path = self.path(key)
        if "w" in mode:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        return self.fs.open(path, mode)

    def writer(self, max_bytes: int | None = None) -> BlobWriter:
        """A writer to a fresh temporary key; `rename` the blob into place once it is accepted."""
        return BlobWriter(self, f"{TMP}/{uuid.uuid4().hex}", max_bytes)

    def stage_file(self, local: Path) -> Blob:
        """A local file copied to a temporary blob; `rename` it into place once it is accepted."""
        writer = self.writer()
        try:
            with open(local, "rb") as src:
                while chunk := src.read(CHUNK):
                    writer.write(chunk)
            return writer.close()
        except BaseException:
            writer.discard()
            raise

    def put(self, chunks: Iterable[bytes], key: str) -> Blob:
        """Write chunks to a temporary blob, then rename it to key."""
        writer = self.writer()
        try:
            for chunk in chunks:
                writer.write(chunk)
            blob = writer.close()
        except BaseException:
            writer.discard()
            raise
        self.rename(blob.key, key)
        return Blob(key, blob.sha256, blob.bytes)

    def put_file(self, local: Path, key: str) -> Blob:
        blob = self.stage_file(local)
        self.rename(blob.key, key)
        return Blob(key, blob.sha256, blob.bytes)

    def rename(self, src: str, dst: str) -> None:
        dst_path = self.path(dst)
        self.fs.makedirs(dst_path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.mv(self.path(src), dst_path)

    def delete(self, key: str) -> None:
        """Remove a blob; a missing one is not an error."""
        try:
            self.fs.rm(self.path(key))
        except FileNotFoundError:
            pass

    def delete_prefix(self, prefix: str) -> None:
        """Remove every blob under prefix/ (nothing there is not an error)."""
        path = self.path(prefix)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def sweep_tmp(self, max_age_s: float) -> list[str]:
        """Delete temporary blobs untouched for max_age_s (left by a process that died mid-write); their keys."""
        root = self.path(TMP)
        try:
            found = self.fs.find(root, detail=True)
        except FileNotFoundError:
            return []
        cutoff = time.time() - max_age_s
        swept = []
        for path, info in found.items():
            modified = _modified(info)
            if modified is not None and modified <= cutoff:
                try:
                    self.fs.rm(path)
                except FileNotFoundError:
                    continue  # renamed into place, or swept by another process, meanwhile
                swept.append(path.removeprefix(f"{self.root}/"))
        return swept

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes start..end (inclusive; end None = to the end of the blob), chunk by chunk."""
        with self.open(key) as f:
            f.seek(start)
            left = None if end is None else end - start + 1
            while left is None or left > 0:
                chunk = f.read(CHUNK if left is None else min(CHUNK, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def local_copy(self, key: str, dest_dir: Path, name: str | None = None) -> Path:
        """The blob as a local file in dest_dir: a symlink for local storage, a download otherwise.

        The engine takes file paths; linking avoids copying blocks that already sit on this disk.
        """
        dest = dest_dir / (name or key.rsplit("/", 1)[-1])
        if self.is_local:
            os.symlink(self.path(key), dest)
        else:
            with self.open(key) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
        return dest

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        """A URL that reads the blob straight from the object store for `expires_s` seconds, without
        this service's credentials (None for local storage, which has no such URL)."""
        if self.is_local:
            return None
        return str(self.fs.url(self.path(key), expires=expires_s))

    def ping(self) -> None:
        """Raise unless the storage answers."""
        self.fs.info(self.path(MARKER))


def _modified(info: dict[str, Any]) -> float | None:
    """A listing entry's modification time as epoch seconds (local files: mtime; object stores: LastModified)."""
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return None
