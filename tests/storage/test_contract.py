"""The storage contract, run against every backend: the local store and the MinIO adapter on nanio."""

from __future__ import annotations

import hashlib
import io
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from fabric.errors import InvalidInput, NotFound
from services.storage.base import StorageService
from tests.storage.conftest import tree

MIB = 1024 * 1024


class Unseekable(io.RawIOBase):
    """A stream of known bytes that cannot seek or tell its length (like a socket or a pipe)."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        size = min(len(buffer), len(self._data) - self._pos)
        buffer[:size] = self._data[self._pos : self._pos + size]
        self._pos += size
        return size


def test_bytes_round_trip(storage: StorageService, bucket: str) -> None:
    data = bytes(range(256)) * 17
    assert storage.upload_file(bucket, "docs/report.bin", data) == f"{bucket}/docs/report.bin"
    assert storage.download_file(bucket, "docs/report.bin") == data
    info = storage.stat(bucket, "docs/report.bin")
    assert (info.size, info.content_type) == (len(data), "application/octet-stream")
    assert storage.exists(bucket, "docs/report.bin")


def test_file_objects_round_trip_from_their_position(
    storage: StorageService, bucket: str, tmp_path: Path
) -> None:
    on_disk = tmp_path / "upload.dat"
    on_disk.write_bytes(b"header|" + os.urandom(300_000))
    with on_disk.open("rb") as handle:
        storage.upload_file(bucket, "from-disk", handle, "application/x-data")
    assert storage.download_file(bucket, "from-disk") == on_disk.read_bytes()

    buffer = io.BytesIO(b"skip-me|the rest")
    buffer.seek(len(b"skip-me|"))
    storage.upload_file(bucket, "from-position", buffer)
    assert storage.download_file(bucket, "from-position") == b"the rest"

    storage.upload_file(bucket, "unseekable", io.BufferedReader(Unseekable(b"streamed bytes")))
    assert storage.download_file(bucket, "unseekable") == b"streamed bytes"


def test_upload_text_is_utf8_with_a_text_content_type(storage: StorageService, bucket: str) -> None:
    text = '{"result": "ok", "note": "naïve café ✓"}'
    assert (
        storage.upload_text(bucket, "executions/e1/result.json", text)
        == f"{bucket}/executions/e1/result.json"
    )
    assert storage.download_file(bucket, "executions/e1/result.json") == text.encode("utf-8")
    assert storage.stat(bucket, "executions/e1/result.json").content_type == "text/plain; charset=utf-8"


@pytest.mark.parametrize("how", ["bytes", "stream"])
def test_eight_mib_object_round_trips(storage: StorageService, bucket: str, how: str) -> None:
    data = os.urandom(8 * MIB + 12_345)
    payload = data if how == "bytes" else io.BufferedReader(Unseekable(data))
    storage.upload_file(bucket, "big/blob", payload)
    got = storage.download_file(bucket, "big/blob")
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert storage.stat(bucket, "big/blob").size == len(data)


def test_content_types_are_kept_and_replaced_with_the_object(storage: StorageService, bucket: str) -> None:
    kinds = {"a.png": "image/png", "b.json": "application/json", "c.csv": "text/csv; charset=utf-8"}
    for name, content_type in kinds.items():
        storage.upload_file(bucket, name, name.encode(), content_type)
    for name, content_type in kinds.items():
        assert storage.stat(bucket, name).content_type == content_type
    storage.upload_file(bucket, "a.png", b"now text", "text/markdown")
    assert storage.download_file(bucket, "a.png") == b"now text"
    assert storage.stat(bucket, "a.png").content_type == "text/markdown"


def test_a_missing_content_type_means_octet_stream_and_a_bad_one_is_refused(
    storage: StorageService, bucket: str
) -> None:
    storage.upload_file(bucket, "untyped", b"x", None)  # as an upload that came without a type
    assert storage.stat(bucket, "untyped").content_type == "application/octet-stream"
    with pytest.raises(InvalidInput, match="content type"):
        storage.upload_file(bucket, "badly-typed", b"x", "text/plain\r\nX-Injected: 1")
    assert not storage.exists(bucket, "badly-typed")


def test_listing_with_prefix_is_sorted_and_complete(storage: StorageService, bucket: str) -> None:
    names = ["b/2.txt", "a/1.txt", "a/sub/3.txt", "a-sibling.txt", "top.txt", "a/0.txt", "é/sp ace+%&?#.txt"]
    for name in names:
        storage.upload_text(bucket, name, name)
    assert storage.list_files(bucket) == sorted(names)
    assert storage.list_files(bucket, prefix="a/") == ["a/0.txt", "a/1.txt", "a/sub/3.txt"]
    assert storage.list_files(bucket, prefix="a") == ["a-sibling.txt", "a/0.txt", "a/1.txt", "a/sub/3.txt"]
    assert storage.list_files(bucket, prefix="a/sub/") == ["a/sub/3.txt"]
    assert storage.list_files(bucket, prefix="a/s") == ["a/sub/3.txt"]
    assert storage.list_files(bucket, prefix="nothing/") == []
    storage.delete_file(bucket, "a/sub/3.txt")
    assert storage.list_files(bucket, prefix="a/") == ["a/0.txt", "a/1.txt"]


def test_a_bucket_never_written_lists_empty(storage: StorageService, bucket: str) -> None:
    assert storage.list_files(bucket) == []


def test_missing_objects_raise_not_found_naming_them(storage: StorageService, bucket: str) -> None:
    with pytest.raises(NotFound, match=f"{bucket}/no/such.txt"):
        storage.download_file(bucket, "no/such.txt")  # the bucket does not exist either
    storage.upload_text(bucket, "present.txt", "here")
    with pytest.raises(NotFound, match=f"{bucket}/absent.txt"):
        storage.download_file(bucket, "absent.txt")
    with pytest.raises(NotFound, match=f"{bucket}/absent.txt"):
        storage.stat(bucket, "absent.txt")
    assert not storage.exists(bucket, "absent.txt")
    # A prefix of an existing object is not an object.
    storage.upload_text(bucket, "dir/inner.txt", "x")
    with pytest.raises(NotFound):
        storage.download_file(bucket, "dir")


def test_delete_removes_and_is_idempotent(storage: StorageService, bucket: str) -> None:
    storage.upload_text(bucket, "gone/soon.txt", "bye")
    storage.delete_file(bucket, "gone/soon.txt")
    assert not storage.exists(bucket, "gone/soon.txt")
    with pytest.raises(NotFound):
        storage.download_file(bucket, "gone/soon.txt")
    storage.delete_file(bucket, "gone/soon.txt")
    storage.delete_file(f"{bucket}-never", "x")
    assert storage.list_files(bucket) == []


def test_presigned_url_is_fetched_over_http(storage: StorageService, bucket: str) -> None:
    data = os.urandom(70_000)
    storage.upload_file(bucket, "shared/photo 1+%.png", data, "image/png")
    url = storage.get_presigned_url(bucket, "shared/photo 1+%.png", expires=timedelta(minutes=5))
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.content == data
    assert response.headers["content-type"] == "image/png"


def test_presigned_url_for_a_missing_object_answers_404(storage: StorageService, bucket: str) -> None:
    storage.upload_text(bucket, "other", "x")
    response = httpx.get(storage.get_presigned_url(bucket, "not-there"), timeout=10)
    assert response.status_code == 404


def _replace_query_value(url: str, key: str, mutate: str) -> str:
    parts = urlsplit(url)
    pairs = [p.split("=", 1) for p in parts.query.split("&")]
    query = "&".join(f"{k}={mutate if k == key else v}" for k, v in pairs)
    return urlunsplit(parts._replace(query=query))


def test_tampered_presigned_urls_are_refused(storage: StorageService, bucket: str) -> None:
    storage.upload_text(bucket, "public.txt", "public")
    storage.upload_text(bucket, "secret.txt", "secret")
    url = storage.get_presigned_url(bucket, "public.txt")
    assert httpx.get(url, timeout=10).status_code == 200

    swapped_object = url.replace("/public.txt?", "/secret.txt?")
    assert httpx.get(swapped_object, timeout=10).status_code == 403

    signature_key = "X-Amz-Signature" if "X-Amz-Signature" in url else "signature"
    signature = dict(p.split("=", 1) for p in urlsplit(url).query.split("&"))[signature_key]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    assert httpx.get(_replace_query_value(url, signature_key, flipped), timeout=10).status_code == 403

    expires_key = "X-Amz-Expires" if "X-Amz-Expires" in url else "expires"
    longer = str(int(dict(p.split("=", 1) for p in urlsplit(url).query.split("&"))[expires_key]) + 3600)
    assert httpx.get(_replace_query_value(url, expires_key, longer), timeout=10).status_code == 403


def test_expired_presigned_urls_are_refused(storage: StorageService, bucket: str) -> None:
    storage.upload_text(bucket, "old.txt", "old")
    issued = datetime.now(UTC) - timedelta(hours=2)
    url = storage.get_presigned_url(bucket, "old.txt", expires=timedelta(hours=1), issued_at=issued)
    assert httpx.get(url, timeout=10).status_code == 403
    fresh = storage.get_presigned_url(bucket, "old.txt", expires=timedelta(hours=1))
    assert httpx.get(fresh, timeout=10).status_code == 200


@pytest.mark.parametrize("expires", [timedelta(0), timedelta(seconds=-5), timedelta(days=8)])
def test_presign_expiry_outside_one_second_to_seven_days_is_refused(
    storage: StorageService, bucket: str, expires: timedelta
) -> None:
    with pytest.raises(InvalidInput, match="expires"):
        storage.get_presigned_url(bucket, "x", expires=expires)


ESCAPING_NAMES = {
    "parent segment": "../outside.txt",
    "nested parent segment": "a/../../outside.txt",
    "trailing parent segment": "a/..",
    "dot segment": "./a.txt",
    "absolute path": "/etc/passwd",
    "NUL byte": "evil\x00.txt",
    "backslash": "..\\outside.txt",
    "backslash inside": "a\\b.txt",
    "over 1024 bytes": "x" * 1025,
    "over 1024 bytes of UTF-8": "é" * 513,
    "empty": "",
    "empty segment": "a//b.txt",
    "trailing slash": "dir/",
    "control character": "line\nbreak.txt",
}


@pytest.mark.parametrize("name", list(ESCAPING_NAMES.values()), ids=list(ESCAPING_NAMES))
def test_escaping_object_names_are_refused_with_nothing_written(
    storage: StorageService, bucket: str, backend_root: Path, name: str
) -> None:
    before = tree(backend_root)
    calls = {
        "upload_file": lambda: storage.upload_file(bucket, name, b"payload"),
        "upload_file(stream)": lambda: storage.upload_file(bucket, name, io.BytesIO(b"payload")),
        "upload_text": lambda: storage.upload_text(bucket, name, "payload"),
        "download_file": lambda: storage.download_file(bucket, name),
        "stat": lambda: storage.stat(bucket, name),
        "exists": lambda: storage.exists(bucket, name),
        "delete_file": lambda: storage.delete_file(bucket, name),
        "get_presigned_url": lambda: storage.get_presigned_url(bucket, name),
    }
    for call_name, call in calls.items():
        with pytest.raises(InvalidInput, match="object name") as caught:
            call()
        assert "object name" in str(caught.value), call_name
    assert tree(backend_root) == before
    assert storage.list_files(bucket) == []


def test_a_name_of_exactly_1024_bytes_is_accepted(storage: StorageService, bucket: str) -> None:
    name = "/".join(["d" * 200] * 5) + "/" + "f" * 19  # 5*201 + 19 = 1024 bytes, segments under 256
    assert len(name.encode()) == 1024
    storage.upload_text(bucket, name, "deep")
    assert storage.download_file(bucket, name) == b"deep"
    assert storage.list_files(bucket) == [name]


@pytest.mark.parametrize(
    "bad_bucket", ["UPPER", "ab", "a_b", "../etc", "-leading", "trailing-", "192.168.1.1", "a..b", "x" * 64]
)
def test_bad_bucket_names_are_refused(storage: StorageService, bad_bucket: str, backend_root: Path) -> None:
    before = tree(backend_root)
    with pytest.raises(InvalidInput, match="bucket name"):
        storage.upload_text(bad_bucket, "x.txt", "x")
    with pytest.raises(InvalidInput, match="bucket name"):
        storage.list_files(bad_bucket)
    assert tree(backend_root) == before


def test_data_that_is_not_bytes_is_refused(storage: StorageService, bucket: str) -> None:
    with pytest.raises(InvalidInput, match="file_data must be bytes"):
        storage.upload_file(bucket, "text", "a str")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="file_data must be bytes"):
        storage.upload_file(bucket, "text", io.StringIO("a text stream"))  # type: ignore[arg-type]
    assert storage.list_files(bucket) == []


def test_health_check_reports_healthy(storage: StorageService) -> None:
    assert isinstance(storage, StorageService)
    health = storage.health_check()
    assert health["status"] == "healthy"
    assert health["backend"] == storage.backend
