"""What only the local store has: its layout, streaming writes, atomic replacement, several processes at once,
and the presigned-URL server run on its own."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import multiprocessing
import os
import sys
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest

from config import get_settings
from fabric.errors import BackendUnavailable, ConfigurationError, InvalidInput, NotFound
from services.storage.local import CONTENT_TYPE_XATTR, LocalStorage, SignatureRefused, _disk_errors
from tests.storage.conftest import SIGNING_KEY, PresignServer, make_local, tree
from tests.support.servers import ManagedProcess, free_port, wait_until

MIB = 1024 * 1024


class PatternStream(io.RawIOBase):
    """``size`` bytes made on demand, never held at once: a stand-in for a 100 MiB upload."""

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.digest = hashlib.sha256()
        self._block = bytes(range(256)) * 256  # 64 KiB

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        size = min(len(buffer), self.remaining, len(self._block))
        buffer[:size] = self._block[:size]
        self.digest.update(self._block[:size])
        self.remaining -= size
        return size


class FailingStream(io.RawIOBase):
    """Gives ``good`` bytes, then fails like a dropped client connection."""

    def __init__(self, good: int) -> None:
        self.good = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.good <= 0:
            raise ConnectionResetError("client went away")
        size = min(len(buffer), self.good)
        buffer[:size] = b"z" * size
        self.good -= size
        return size


@pytest.fixture
def local(tmp_path: Path, presign_server: PresignServer) -> LocalStorage:
    return make_local(tmp_path / "objects", presign_server)


def test_layout_one_file_per_object_with_its_type_in_an_extended_attribute(local: LocalStorage) -> None:
    local.upload_file("docs", "a/b.json", b"{}", "application/json")
    path = local.root / "docs" / "a" / "b.json"
    assert path.read_bytes() == b"{}"
    assert os.getxattr(path, CONTENT_TYPE_XATTR) == b"application/json"
    assert not (local.root / ".meta").exists()
    assert local.list_files("docs") == ["a/b.json"]
    assert local.stat("docs", "a/b.json").content_type == "application/json"
    assert not list((local.root / ".tmp").iterdir())


def test_without_extended_attributes_types_live_in_hidden_sidecars(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "objects", SIGNING_KEY, "http://unused", xattrs=False)
    store.upload_file("docs", "a/b.json", b"{}", "application/json")
    path = store.root / "docs" / "a" / "b.json"
    with pytest.raises(OSError, match="No data available"):
        os.getxattr(path, CONTENT_TYPE_XATTR)
    sidecar = json.loads((store.root / ".meta" / "docs" / "a" / "b.json").read_text())
    assert sidecar == {"content_type": "application/json", "size": 2}
    assert store.list_files("docs") == ["a/b.json"]
    assert store.stat("docs", "a/b.json").content_type == "application/json"
    store.delete_file("docs", "a/b.json")
    assert not (store.root / ".meta" / "docs" / "a").exists()


def test_objects_stored_with_sidecars_read_and_replace_cleanly(tmp_path: Path) -> None:
    """A data directory an earlier version (or a filesystem without extended attributes) wrote keeps its
    content types; a later write puts the type on the file, which wins over the old sidecar."""
    root = tmp_path / "objects"
    LocalStorage(root, SIGNING_KEY, "http://unused", xattrs=False).upload_text(
        "docs", "old.txt", "old", "text/csv"
    )
    store = LocalStorage(root, SIGNING_KEY, "http://unused")
    assert store.stat("docs", "old.txt").content_type == "text/csv"
    store.upload_text("docs", "old.txt", "new", "text/markdown")
    assert (store.download_file("docs", "old.txt"), store.stat("docs", "old.txt").content_type) == (
        b"new",
        "text/markdown",
    )
    store.delete_file("docs", "old.txt")
    assert not (root / ".meta" / "docs" / "old.txt").exists()
    assert store.list_files("docs") == []


def _write_and_delete(root: str, role: str, rounds: int) -> None:
    store = LocalStorage(Path(root), SIGNING_KEY, "http://unused", fsync=False)
    for n in range(rounds):
        name = f"churn/{n % 4}/object.txt"
        if role == "writer":
            store.upload_text("b-one", name, f"round {n}")
        else:
            store.delete_file("b-one", name)  # prunes churn/{n % 4} when it empties


def test_an_upload_survives_a_delete_pruning_its_directory(local: LocalStorage) -> None:
    """Uploads take no lock, so a delete can prune the directory an upload just made before the upload
    renames into it; the upload makes it again (without that, this fails within a few hundred rounds)."""
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_write_and_delete, args=(str(local.root), role, 600))
        for role in ("writer", "deleter", "writer", "deleter")
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    assert [process.exitcode for process in processes] == [0, 0, 0, 0]
    assert not list((local.root / ".tmp").iterdir())


def test_a_100_mib_upload_streams_in_chunks(local: LocalStorage) -> None:
    stream = PatternStream(100 * MIB)
    tracemalloc.start()
    try:
        local.upload_file("big", "hundred.bin", io.BufferedReader(stream, buffer_size=64 * 1024))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MIB, f"upload held {peak / MIB:.1f} MiB at once"
    handle, info = local.open_object("big", "hundred.bin")
    assert info.size == 100 * MIB
    digest = hashlib.sha256()
    for chunk in local.iter_object(handle):
        digest.update(chunk)
    assert digest.hexdigest() == stream.digest.hexdigest()


def test_a_failed_upload_leaves_the_old_object_and_no_debris(local: LocalStorage) -> None:
    local.upload_file("b-one", "report.txt", b"version 1", "text/plain")
    with pytest.raises(ConnectionResetError):
        local.upload_file("b-one", "report.txt", io.BufferedReader(FailingStream(3 * MIB)), "text/csv")
    assert local.download_file("b-one", "report.txt") == b"version 1"
    assert local.stat("b-one", "report.txt").content_type == "text/plain"
    assert not list((local.root / ".tmp").iterdir())
    with pytest.raises(ConnectionResetError):
        local.upload_file("b-one", "never.txt", io.BufferedReader(FailingStream(10)))
    assert local.list_files("b-one") == ["report.txt"]


def test_an_object_cannot_also_be_a_directory(local: LocalStorage) -> None:
    local.upload_text("b-one", "a", "file a")
    with pytest.raises(InvalidInput, match="a/b"):
        local.upload_text("b-one", "a/b", "under a")
    local.upload_text("b-one", "c/d", "under c")
    with pytest.raises(InvalidInput, match="objects named c/"):
        local.upload_text("b-one", "c", "file c")
    assert local.list_files("b-one") == ["a", "c/d"]
    assert not list((local.root / ".tmp").iterdir())


def test_a_segment_longer_than_the_filesystem_allows_is_refused(local: LocalStorage) -> None:
    before = tree(local.root.parent)
    with pytest.raises(InvalidInput, match="255 bytes"):
        local.upload_text("b-one", "d/" + "x" * 256, "x")
    assert tree(local.root.parent) == before


def test_delete_prunes_empty_directories_but_keeps_the_bucket(local: LocalStorage) -> None:
    local.upload_text("b-one", "x/y/z.txt", "deep")
    local.upload_text("b-one", "x/keep.txt", "keep")
    local.delete_file("b-one", "x/y/z.txt")
    assert not (local.root / "b-one" / "x" / "y").exists()
    assert not (local.root / ".meta" / "b-one" / "x" / "y").exists()
    assert (local.root / "b-one" / "x" / "keep.txt").exists()
    local.delete_file("b-one", "x/keep.txt")
    assert (local.root / "b-one").is_dir()
    assert list((local.root / "b-one").iterdir()) == []


def test_signature_checks_are_exact(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    store = LocalStorage(tmp_path, SIGNING_KEY, "https://files.example/api", clock=lambda: now[0])
    url = store.get_presigned_url("b-one", "a b/c.txt")
    assert url.startswith("https://files.example/api/files/b-one/a%20b/c.txt?expires=1800003600&signature=")
    signature = url.rsplit("=", 1)[1]
    store.verify_presigned("b-one", "a b/c.txt", "1800003600", signature)
    now[0] = 1_800_003_600.0
    store.verify_presigned("b-one", "a b/c.txt", "1800003600", signature)  # valid through its last second
    now[0] = 1_800_003_601.0
    with pytest.raises(SignatureRefused, match="expired"):
        store.verify_presigned("b-one", "a b/c.txt", "1800003600", signature)
    other_key = LocalStorage(tmp_path, "another-key", "https://files.example/api", clock=lambda: 0.0)
    with pytest.raises(SignatureRefused, match="does not match"):
        other_key.verify_presigned("b-one", "a b/c.txt", "1800003600", signature)
    with pytest.raises(SignatureRefused, match="not a Unix time"):
        store.verify_presigned("b-one", "a b/c.txt", "soon", signature)


def _writer(root: str, worker: int, rounds: int, xattrs: bool) -> None:
    store = LocalStorage(Path(root), SIGNING_KEY, "http://unused", xattrs=None if xattrs else False)
    for n in range(rounds):
        body = f"writer-{worker}-round-{n}|".encode() * (50 + 97 * worker)
        store.upload_file("shared", "contended.bin", body, f"application/x-writer-{worker}")
        store.upload_file("shared", f"own/{worker}/{n}.bin", body, f"application/x-writer-{worker}")
        if n % 3 == 2:
            store.delete_file("shared", f"own/{worker}/{n - 1}.bin")


@pytest.mark.parametrize("xattrs", [True, False], ids=["types-in-xattrs", "types-in-sidecars"])
def test_several_processes_write_one_store_at_once(local: LocalStorage, xattrs: bool) -> None:
    workers, rounds = 4, 40
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_writer, args=(str(local.root), w, rounds, xattrs)) for w in range(workers)
    ]
    for process in processes:
        process.start()
    mismatches, reads = [], 0
    # Read the contended object while the writers replace it: bytes and type must come from one upload.
    while any(p.is_alive() for p in processes) or reads == 0:
        try:
            handle, info = local.open_object("shared", "contended.bin")
        except NotFound:  # before the first write lands
            time.sleep(0.001)
            continue
        with handle:
            body = handle.read()
        reads += 1
        writer = body.split(b"-", 2)[1].decode()
        if info.content_type != f"application/x-writer-{writer}" or info.size != len(body):
            mismatches.append((info.content_type, body[:30]))
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert mismatches == []
    expected = sorted(
        f"own/{w}/{n}.bin"
        for w in range(workers)
        for n in range(rounds)
        if not (n % 3 == 1 and n + 1 < rounds)
    )
    assert local.list_files("shared", prefix="own/") == expected
    for name in expected:
        worker = int(name.split("/")[1])
        assert local.stat("shared", name).content_type == f"application/x-writer-{worker}"
    assert not list((local.root / ".tmp").iterdir())


def test_the_presign_server_runs_on_its_own(tmp_path: Path) -> None:
    port = free_port()
    settings = get_settings()
    env = {**os.environ, "STORAGE_BACKEND": "local", "STORAGE_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    store = LocalStorage(
        settings.data_dir / "objects",
        settings.storage_signing_key.get_secret_value(),
        f"http://127.0.0.1:{port}",
    )
    store.upload_file("standalone", "hello.json", b'{"hello": "world"}', "application/json")
    server = ManagedProcess(
        [sys.executable, "-m", "api.presign", "--host", "127.0.0.1", "--port", str(port)],
        tmp_path,
        "presign",
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    server.start()
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200, timeout=20,
                   what="stand-alone presign server")  # fmt: skip
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json()["status"] == "healthy"
        response = httpx.get(store.get_presigned_url("standalone", "hello.json"))
        assert response.status_code == 200
        assert response.json() == {"hello": "world"}
        assert response.headers["content-type"] == "application/json"
        tampered = store.get_presigned_url("standalone", "hello.json").replace("hello.json", "other.json")
        assert httpx.get(tampered).status_code == 403
    finally:
        server.stop()
        assert "Traceback" not in server.log_tail(200), server.log_tail(200)


def test_the_route_refuses_a_request_without_a_signature(
    local: LocalStorage, presign_server: PresignServer
) -> None:
    local.upload_text("b-one", "x.txt", "x")
    assert httpx.get(f"{presign_server.url}/files/b-one/x.txt").status_code == 403
    assert httpx.get(f"{presign_server.url}/files/b-one/x.txt?expires=1&signature=00").status_code == 403


def test_stale_uploads_of_crashed_processes_are_purged(tmp_path: Path) -> None:
    now = [2_000_000_000.0]
    store = LocalStorage(tmp_path, SIGNING_KEY, "http://unused", clock=lambda: now[0])
    store.upload_text("b-one", "kept.txt", "kept")
    tmp_dir = tmp_path / ".tmp"
    old, fresh = tmp_dir / "b-one.crashed", tmp_dir / "b-one.in-progress"
    old.write_bytes(b"half an upload")
    fresh.write_bytes(b"still streaming")
    os.utime(old, (now[0] - 2 * 86400, now[0] - 2 * 86400))
    os.utime(fresh, (now[0] - 60, now[0] - 60))
    assert store.purge_stale_uploads() == 1
    assert sorted(p.name for p in tmp_dir.iterdir()) == ["b-one.in-progress"]
    assert store.download_file("b-one", "kept.txt") == b"kept"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOSPC, BackendUnavailable),
        (errno.EROFS, ConfigurationError),
        (errno.EACCES, ConfigurationError),
    ],
)
def test_disk_failures_map_onto_the_error_tree(tmp_path: Path, code: int, expected: type[Exception]) -> None:
    # Tests run as root here, so a read-only or full disk is simulated at the one place errors are mapped.
    with pytest.raises(expected, match=str(tmp_path)), _disk_errors(tmp_path, "upload of b-one/x"):
        raise OSError(code, os.strerror(code))
    with pytest.raises(ConnectionResetError), _disk_errors(tmp_path, "upload of b-one/x"):
        raise ConnectionResetError(errno.ECONNRESET, "a client's stream is not the disk")
