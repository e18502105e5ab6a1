"""Blob storage: keys cannot escape the root, writes are counted, hashed, limited and published by rename."""

from __future__ import annotations

import hashlib

import pytest

from service.problems import Problem
from service.ranges import byte_range
from service.storage import Storage, TooLarge, UnsafeKey


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(f"file://{tmp_path / 'root'}")


@pytest.mark.parametrize(
    "key",
    [
        "", "/etc/passwd", "../outside", "a/../../outside", "a//b", "a/./b", "nul\x00byte", "back\\slash", "a/",
        "new\nline", "..", "a/..", "~/x", "C:\\x",
        # encoded separators and dots stay text, and such text is not a key
        "..%2Foutside", "a%2F..%2F..%2Fx", "%2e%2e/x", "a%00b", "a\u2215b", "a\uff0f..\uff0fb", "..\u2024/x",
    ],
)  # fmt: skip
def test_unsafe_keys_are_refused(storage, key):
    with pytest.raises(UnsafeKey):
        storage.path(key)
    with pytest.raises(UnsafeKey):
        storage.open(key, "wb")


@pytest.mark.security
def test_symlinks_inside_the_root_cannot_lead_outside(storage, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    root = tmp_path / "root"
    (root / "blocks").symlink_to(outside, target_is_directory=True)  # a planted directory link
    (root / "file.bin").symlink_to(outside / "secret.txt")  # a planted file link
    for key in ("blocks/secret.txt", "blocks/new.bin", "file.bin"):
        with pytest.raises(UnsafeKey, match="outside the storage root"):
            storage.open(key, "wb")
        with pytest.raises(UnsafeKey):
            b"".join(storage.iter_bytes(key))
    with pytest.raises(UnsafeKey):
        storage.put([b"x"], "blocks/evil.bin")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "not yours"
    # A link that stays inside the root is just another name for a blob there.
    storage.put([b"inside"], "real/a.bin")
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    assert b"".join(storage.iter_bytes("alias/a.bin")) == b"inside"


def test_put_hashes_counts_and_renames_into_place(storage, tmp_path):
    data = [b"hello ", b"world"]
    blob = storage.put(data, "blocks/s/abc.parquet")
    assert blob.sha256 == hashlib.sha256(b"hello world").hexdigest() and blob.bytes == 11
    assert storage.size("blocks/s/abc.parquet") == 11
    assert b"".join(storage.iter_bytes("blocks/s/abc.parquet")) == b"hello world"
    assert b"".join(storage.iter_bytes("blocks/s/abc.parquet", 6, 9)) == b"worl"
    assert not list((tmp_path / "root" / "tmp").iterdir())  # the temporary blob was renamed away


def test_writer_limit_and_discard(storage, tmp_path):
    writer = storage.writer(max_bytes=10)
    writer.write(b"12345")
    with pytest.raises(TooLarge):
        writer.write(b"678901")
    writer.discard()
    assert not storage.exists(writer.key)
    assert not list((tmp_path / "root" / "tmp").iterdir())


def test_local_copy_links_local_blobs(storage, tmp_path):
    storage.put([b"abc"], "x/y.bin")
    copy = storage.local_copy("x/y.bin", tmp_path, "z.bin")
    assert copy.read_bytes() == b"abc" and copy.is_symlink()


def test_delete_is_quiet_about_missing_blobs(storage):
    storage.delete("never/written")
    storage.put([b"a"], "k")
    storage.delete("k")
    assert not storage.exists("k")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 9)),
        ("bytes=90-", (90, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-500", (0, 99)),
        ("bytes=50-500", (50, 99)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file instead
        ("items=0-1", None),
        ("bytes=9-2", None),  # invalid: ignored
    ],
)
def test_byte_ranges(header, expected):
    assert byte_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=-0"])
def test_unsatisfiable_ranges_are_416(header):
    with pytest.raises(Problem) as raised:
        byte_range(header, 100)
    assert raised.value.status == 416 and raised.value.headers == {"Content-Range": "bytes */100"}
