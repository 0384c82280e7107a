"""What only the MinIO adapter has: multipart on the wire, the public endpoint, buckets made on demand,
error mapping, and the choice of backend by configuration."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from config import reload_settings
from fabric.errors import BackendUnavailable, ConfigurationError
from services.storage import get_storage_service, reset_storage_service
from services.storage.local import LocalStorage
from services.storage.minio_backend import MinioStorage, parse_endpoint
from tests.storage.conftest import make_minio
from tests.storage.test_contract import Unseekable
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY, NanioServer
from tests.support.servers import free_port

MIB = 1024 * 1024


def test_large_objects_go_up_as_multipart(nanio_server: NanioServer, bucket: str) -> None:
    storage = make_minio(nanio_server)
    storage.upload_file(bucket, "known-length", os.urandom(8 * MIB))
    storage.upload_file(bucket, "unknown-length", io.BufferedReader(Unseekable(os.urandom(17 * MIB))))
    raw = nanio_server.client()
    # An S3 ETag of a multipart object is "<md5 of part md5s>-<part count>".
    assert raw.stat_object(bucket, "known-length").etag.endswith("-2")
    assert raw.stat_object(bucket, "unknown-length").etag.endswith("-3")  # 8 MiB parts: 8 + 8 + 1
    storage.upload_file(bucket, "small", b"tiny")
    assert "-" not in raw.stat_object(bucket, "small").etag


def test_buckets_are_created_on_first_write(nanio_server: NanioServer, bucket: str) -> None:
    storage = make_minio(nanio_server)
    raw = nanio_server.client()
    assert not raw.bucket_exists(bucket)
    storage.upload_text(bucket, "first.txt", "first")
    assert raw.bucket_exists(bucket)
    # Deleted behind the adapter's back: a write that can resend its data makes it again.
    raw.remove_object(bucket, "first.txt")
    raw.remove_bucket(bucket)
    storage.upload_text(bucket, "second.txt", "second")
    assert storage.list_files(bucket) == ["second.txt"]
    # A stream already consumed cannot be resent: a transient error, and the retry succeeds.
    raw.remove_object(bucket, "second.txt")
    raw.remove_bucket(bucket)
    with pytest.raises(BackendUnavailable, match="disappeared"):
        storage.upload_file(bucket, "third.bin", io.BufferedReader(Unseekable(b"third")))
    storage.upload_file(bucket, "third.bin", io.BufferedReader(Unseekable(b"third")))
    assert storage.download_file(bucket, "third.bin") == b"third"


def test_presigned_urls_are_signed_for_the_public_endpoint(nanio_server: NanioServer, bucket: str) -> None:
    # Workers reach the server as 127.0.0.1, browsers as localhost: the URL must name and be signed for
    # the host the browser uses, or S3 refuses it.
    storage = MinioStorage(
        nanio_server.endpoint,
        ACCESS_KEY,
        SECRET_KEY,
        region=REGION,
        public_endpoint=f"http://localhost:{nanio_server.port}",
    )
    storage.upload_text(bucket, "page.html", "<p>hi</p>", "text/html")
    url = storage.get_presigned_url(bucket, "page.html")
    assert url.startswith(f"http://localhost:{nanio_server.port}/{bucket}/page.html?")
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.text == "<p>hi</p>"
    # The same URL pointed back at the internal host no longer matches its signature.
    internal = url.replace(f"localhost:{nanio_server.port}", nanio_server.endpoint)
    assert httpx.get(internal, timeout=10).status_code == 403


def test_signing_needs_no_connection_to_the_public_endpoint(bucket: str) -> None:
    # Nothing listens on either endpoint: signing is local because the region is known.
    port = free_port()
    storage = MinioStorage(
        f"127.0.0.1:{port}", ACCESS_KEY, SECRET_KEY, public_endpoint="https://files.example.com"
    )
    url = storage.get_presigned_url(bucket, "a.txt")
    assert url.startswith(f"https://files.example.com/{bucket}/a.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256")


def test_a_server_that_does_not_answer_is_backend_unavailable(bucket: str) -> None:
    storage = MinioStorage(f"127.0.0.1:{free_port()}", ACCESS_KEY, SECRET_KEY, retries=0, timeout=2)
    with pytest.raises(BackendUnavailable, match="did not answer"):
        storage.upload_text(bucket, "x.txt", "x")
    with pytest.raises(BackendUnavailable, match="did not answer"):
        storage.download_file(bucket, "x.txt")
    with pytest.raises(BackendUnavailable):
        storage.list_files(bucket)
    health = storage.health_check()
    assert health["status"] == "unhealthy"
    assert "Connection refused" in health["error"]


def test_wrong_credentials_are_a_configuration_error(nanio_server: NanioServer, bucket: str) -> None:
    storage = MinioStorage(nanio_server.endpoint, ACCESS_KEY, "wrong-secret", region=REGION)
    with pytest.raises(ConfigurationError, match="MINIO_SECRET_KEY"):
        storage.download_file(bucket, "x.txt")


def test_endpoints_parse_as_host_port_or_url() -> None:
    assert parse_endpoint("minio:9000", secure=False) == ("minio:9000", False)
    assert parse_endpoint("https://files.example.com", secure=False) == ("files.example.com", True)
    assert parse_endpoint("http://10.0.0.5:9000/", secure=True) == ("10.0.0.5:9000", False)
    with pytest.raises(ConfigurationError, match="without a path"):
        parse_endpoint("https://files.example.com/s3", secure=False)
    with pytest.raises(ConfigurationError, match="5 MiB"):
        MinioStorage("minio:9000", ACCESS_KEY, SECRET_KEY, part_size=MIB)


@pytest.fixture
def restore_settings() -> Iterator[None]:
    reset_storage_service()
    yield
    reload_settings()
    reset_storage_service()


def test_the_factory_builds_the_configured_backend(
    monkeypatch: pytest.MonkeyPatch, nanio_server: NanioServer, bucket: str, restore_settings: None
) -> None:
    local = get_storage_service()
    assert isinstance(local, LocalStorage)
    assert local.root == Path(os.environ["DATA_DIR"]).resolve() / "objects"
    assert get_storage_service() is local

    monkeypatch.setenv("STORAGE_BACKEND", "minio")
    monkeypatch.setenv("MINIO_ENDPOINT", nanio_server.endpoint)
    monkeypatch.setenv("MINIO_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("MINIO_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("MINIO_PUBLIC_ENDPOINT", f"localhost:{nanio_server.port}")
    reload_settings()
    reset_storage_service()
    remote = get_storage_service()
    assert isinstance(remote, MinioStorage)
    remote.upload_text(bucket, "via-settings.txt", "configured")
    assert nanio_server.client().get_object(bucket, "via-settings.txt").read() == b"configured"
    assert remote.get_presigned_url(bucket, "via-settings.txt").startswith(
        f"http://localhost:{nanio_server.port}/"
    )
