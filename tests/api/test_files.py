"""The guide's upload and download endpoints, the presigned file route, the body size limit and JSON errors,
over real HTTP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx

from tests.api.conftest import MAX_BODY_BYTES, READ_KEY, ApiServer
from tests.support.s3 import NanioServer


def test_upload_then_download_by_name_and_by_presigned_url(api: httpx.Client, api_server: ApiServer) -> None:
    content = os.urandom(100_000)
    response = api.post("/upload", files={"file": ("report 2026.bin", content, "application/x-report")})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["filename"] == "report 2026.bin"
    assert body["file_path"] == "user-uploads/uploads/report 2026.bin"
    assert body["download_url"].startswith(api_server.url + "/files/user-uploads/uploads/")

    with api_server.client(key=READ_KEY) as reader:
        download = reader.get("/download/report 2026.bin")
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["content-type"] == "application/x-report"
    assert download.headers["content-disposition"] == "attachment; filename*=UTF-8''report%202026.bin"

    # the presigned URL needs no key: its signature is its authentication
    presigned = httpx.get(body["download_url"])
    assert presigned.status_code == 200
    assert presigned.content == content
    tampered = body["download_url"].replace("signature=", "signature=0")
    refused = httpx.get(tampered)
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "Forbidden"


def test_upload_and_download_through_the_minio_adapter(api: httpx.Client, minio_backend: NanioServer) -> None:
    content = os.urandom(50_000)
    response = api.post("/upload", files={"file": ("s3.bin", content, "application/x-s3")})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["download_url"].startswith(f"http://{minio_backend.endpoint}/user-uploads/uploads/s3.bin?")
    assert minio_backend.client().get_object("user-uploads", "uploads/s3.bin").read() == content
    download = api.get("/download/s3.bin")
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["content-type"] == "application/x-s3"
    presigned = httpx.get(body["download_url"])  # signed for S3 itself: no API key involved
    assert presigned.status_code == 200
    assert presigned.content == content
    assert api.get("/download/not-there.bin").status_code == 404


def test_nested_names_round_trip_and_replacing_an_upload(api: httpx.Client) -> None:
    assert api.post("/upload", files={"file": ("a.txt", b"one", "text/plain")}).status_code == 201
    assert api.post("/upload", files={"file": ("a.txt", b"two", "text/plain")}).status_code == 201
    assert api.get("/download/a.txt").content == b"two"


def test_unsafe_or_missing_names_are_refused_and_nothing_is_stored(api: httpx.Client) -> None:
    for name in ["..", "../escape.txt", "a//b", "/etc/passwd"]:
        response = api.post("/upload", files={"file": (name, b"x", "text/plain")})
        assert response.status_code == 422, (name, response.text)
        error = response.json()["error"]
        assert error["type"] == "InvalidInput"
        assert "object name" in error["message"]
    assert api.get("/download/escape.txt").status_code == 404
    missing = api.post("/upload", data={"other": "x"})
    assert missing.status_code == 422
    assert "file" in missing.json()["error"]["message"]


def test_download_of_a_missing_file_is_a_json_404(api: httpx.Client) -> None:
    response = api.get("/download/never-uploaded.txt")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "NotFound"
    assert "never-uploaded.txt" in error["message"]


def test_oversized_bodies_are_refused_with_413(api: httpx.Client, api_server: ApiServer) -> None:
    # declared too large: refused from the Content-Length, before the body is read
    big = b"x" * (MAX_BODY_BYTES + 1)
    response = api.post("/upload", files={"file": ("big.bin", big, "application/octet-stream")})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "PayloadTooLarge"

    # no Content-Length (chunked): counted as it streams, stopped past the limit
    sent = {"bytes": 0}

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            sent["bytes"] += 16 * 1024
            yield b"y" * (16 * 1024)

    url = urlsplit(api_server.url)
    with httpx.Client(base_url=f"{url.scheme}://{url.netloc}", headers=dict(api.headers)) as client:
        streamed = client.post("/workflows", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert streamed.json()["error"]["type"] == "PayloadTooLarge"
    assert api.post("/upload", files={"file": ("small.bin", b"z" * 1000, "text/plain")}).status_code == 201
    assert api.get("/download/big.bin").status_code == 404


def test_validation_errors_and_unknown_routes_are_json(api: httpx.Client) -> None:
    response = api.get("/search/workflows", params={"q": "x", "limit": 51})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "InvalidInput"
    assert "query.limit" in error["message"]
    assert api.get("/no/such/route").json()["error"]["type"] == "NotFound"
    assert api.delete("/workflows").json()["error"]["type"] == "MethodNotAllowed"
    bad_json = api.post("/workflows", content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 422
    assert bad_json.json()["error"]["type"] == "InvalidInput"
