"""The production object store: MinIO (or any S3 service) through the official ``minio`` client.

Buckets are created on first write. Objects of unknown length (a stream that cannot seek) go up as multipart
uploads of ``part_size`` pieces, so memory stays bounded; objects of known length let the client choose single
PUT or multipart. Presigned URLs are signed for ``MINIO_PUBLIC_ENDPOINT`` when it is set, with a second client
that knows its region and therefore never asks the server to sign (the upstream code signed for the internal
host, which browsers cannot reach; an S3 signature covers the host, so the URL cannot be rewritten
afterwards).

Client errors map onto the error tree: NoSuchKey/NoSuchBucket -> NotFound, a refused name -> InvalidInput,
wrong credentials -> ConfigurationError, no answer / 5xx / throttling -> BackendUnavailable.
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, BinaryIO, Concatenate, NoReturn, ParamSpec, TypeVar
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from fabric.errors import BackendUnavailable, ConfigurationError, InvalidInput, NotFound, PermanentError
from services.resilience import guarded
from services.storage.base import (
    DEFAULT_CONTENT_TYPE,
    DEFAULT_EXPIRES,
    FileData,
    ObjectInfo,
    validate_bucket_name,
    validate_content_type,
    validate_expires,
    validate_object_name,
)

#: Part size of multipart uploads of unknown length; also the most one upload thread buffers.
DEFAULT_PART_SIZE = 8 * 1024 * 1024

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NoSuchUpload", "NoSuchVersion"}
_BAD_INPUT = {
    "InvalidBucketName",
    "KeyTooLongError",
    "InvalidObjectName",
    "InvalidArgument",
    "EntityTooLarge",
}
_BAD_CONFIG = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AuthorizationHeaderMalformed"}
_TRANSIENT = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "XMinioServerNotInitialized",
}


def parse_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """``host:port`` and whether to use TLS, from ``host:port`` or ``http(s)://host:port``. Raises
    ConfigurationError for a URL with a path (the client cannot sign for one)."""
    if "://" not in endpoint:
        return endpoint, secure
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ConfigurationError(
            f"MinIO endpoint {endpoint!r} must be host:port or http(s)://host:port without a path"
        )
    return parts.netloc, parts.scheme == "https"


P = ParamSpec("P")
R = TypeVar("R")


def _through_breaker(
    method: Callable[Concatenate[MinioStorage, P], R],
) -> Callable[Concatenate[MinioStorage, P], R]:
    """Run a public network method through the endpoint's circuit breaker (shared by every process through
    Redis), so a dead MinIO is noticed once and calls fail fast with CircuitOpen while it is down. Only
    methods that call no other guarded method wear it (a nested call would find its own probe taken)."""

    @functools.wraps(method)
    def wrapper(storage: MinioStorage, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return guarded(f"minio@{storage.endpoint}", lambda: method(storage, *args, **kwargs))

    return wrapper


class MinioStorage:
    """The storage contract on MinIO/S3. Thread-safe; build one per process (see ``get_storage_service``)."""

    backend = "minio"

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        secure: bool = False,
        region: str = "us-east-1",
        public_endpoint: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        timeout: float = 30.0,
        retries: int = 2,
    ) -> None:
        """Clients for ``endpoint`` (workers) and ``public_endpoint`` (presigned URLs; default the same).
        ``part_size`` (>= 5 MiB, the S3 minimum) sizes multipart uploads of unknown length; ``timeout`` and
        ``retries`` bound how long a call waits for a server that does not answer."""
        if part_size < 5 * 1024 * 1024:
            raise ConfigurationError(f"part_size {part_size} is below the S3 minimum of 5 MiB")
        host, tls = parse_endpoint(endpoint, secure)
        self.endpoint = host
        self.region = region
        self.part_size = part_size
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 5.0), read=timeout),
            maxsize=10,
            retries=urllib3.Retry(
                total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504], allowed_methods=None
            ),
        )
        self._client = Minio(
            host, access_key=access_key, secret_key=secret_key, secure=tls, region=region, http_client=http
        )
        if public_endpoint:
            public_host, public_tls = parse_endpoint(public_endpoint, secure)
            # Signing is local arithmetic once the region is known; this client never opens a connection.
            self._signer = Minio(
                public_host, access_key=access_key, secret_key=secret_key, secure=public_tls, region=region
            )
        else:
            self._signer = self._client
        self._known_buckets: set[str] = set()
        self._bucket_lock = threading.Lock()

    @classmethod
    def from_settings(cls) -> MinioStorage:
        """The store configured by the ``MINIO_*`` settings."""
        from config import get_settings

        settings = get_settings()
        return cls(
            settings.minio_endpoint,
            settings.minio_access_key,
            settings.minio_secret_key.get_secret_value(),
            secure=settings.minio_secure,
            region=settings.minio_region,
            public_endpoint=settings.minio_public_endpoint,
        )

    # --- errors ---------------------------------------------------------------------------------------
    def _raise(self, exc: Exception, what: str) -> NoReturn:
        if isinstance(exc, S3Error):
            code = exc.code or ""
            if code in _NOT_FOUND:
                raise NotFound(f"{what} does not exist ({code})") from exc
            if code in _BAD_INPUT:
                raise InvalidInput(f"{what} refused by MinIO: {code}: {exc.message}") from exc
            if code in _BAD_CONFIG:
                raise ConfigurationError(
                    f"MinIO at {self.endpoint} refused the credentials for {what} ({code}); "
                    "check MINIO_ACCESS_KEY and MINIO_SECRET_KEY"
                ) from exc
            status = getattr(exc.response, "status", 0) or 0
            if code in _TRANSIENT or status >= 500 or status == 429:
                raise BackendUnavailable(
                    f"MinIO at {self.endpoint} is unavailable for {what}: {code}"
                ) from exc
            raise PermanentError(
                f"MinIO at {self.endpoint} refused {what}: {code} ({status}): {exc.message}"
            ) from exc
        if isinstance(exc, ServerError | InvalidResponseError):
            raise BackendUnavailable(f"MinIO at {self.endpoint} failed on {what}: {exc}") from exc
        if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
            raise BackendUnavailable(f"MinIO at {self.endpoint} did not answer for {what}: {exc}") from exc
        raise exc

    def _ensure_bucket(self, bucket: str) -> None:
        if bucket in self._known_buckets:
            return
        with self._bucket_lock:
            if bucket in self._known_buckets:
                return
            try:
                if not self._client.bucket_exists(bucket):
                    self._client.make_bucket(bucket)
            except S3Error as exc:
                # Another process created it between our check and our request.
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    self._raise(exc, f"bucket {bucket}")
            except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
                self._raise(exc, f"bucket {bucket}")
            self._known_buckets.add(bucket)

    # --- writes ---------------------------------------------------------------------------------------
    @_through_breaker
    def upload_file(
        self,
        bucket_name: str,
        object_name: str,
        file_data: FileData,
        content_type: str | None = DEFAULT_CONTENT_TYPE,
    ) -> str:
        """Store ``file_data`` (bytes or a binary file object) as ``bucket/object``. A file object that can
        seek is sent from its current position with its known length; one that cannot is sent as a multipart
        upload of ``part_size`` parts. Returns ``"bucket/object"``."""
        bucket = validate_bucket_name(bucket_name)
        name = validate_object_name(object_name)
        content_type = validate_content_type(content_type)
        stream, length = self._stream(file_data)
        start = stream.tell() if length >= 0 else None
        for attempt in (1, 2):
            self._ensure_bucket(bucket)
            try:
                self._client.put_object(
                    bucket,
                    name,
                    stream,
                    length,
                    content_type=content_type,
                    part_size=self.part_size if length < 0 else 0,
                )
            except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
                if not (isinstance(exc, S3Error) and exc.code == "NoSuchBucket"):
                    self._raise(exc, f"upload of {bucket}/{name}")
                # The bucket was deleted behind our back: make it again and resend, if the data can be
                # read again; a consumed stream cannot, so the caller retries (a transient error).
                self._known_buckets.discard(bucket)
                if start is None or attempt == 2:
                    raise BackendUnavailable(
                        f"bucket {bucket} disappeared during the upload of {name}; retry the upload"
                    ) from exc
                stream.seek(start)
            else:
                break
        return f"{bucket}/{name}"

    @staticmethod
    def _stream(file_data: FileData) -> tuple[BinaryIO, int]:
        if isinstance(file_data, bytes | bytearray | memoryview):
            data = bytes(file_data)
            return io.BytesIO(data), len(data)
        if isinstance(file_data, io.TextIOBase) or not hasattr(file_data, "read"):
            raise InvalidInput(
                f"file_data must be bytes or a binary file object, got {type(file_data).__name__}; "
                "use upload_text for text"
            )
        try:
            seekable = file_data.seekable()
        except (AttributeError, OSError, ValueError):
            seekable = False
        if seekable:
            start = file_data.tell()
            end = file_data.seek(0, io.SEEK_END)
            file_data.seek(start)
            return file_data, end - start
        return file_data, -1

    def upload_text(
        self, bucket_name: str, object_name: str, text: str, content_type: str = "text/plain; charset=utf-8"
    ) -> str:
        """Store ``text`` as UTF-8. Returns ``"bucket/object"``."""
        if not isinstance(text, str):
            raise InvalidInput(f"text must be a str, got {type(text).__name__}; use upload_file for bytes")
        return self.upload_file(bucket_name, object_name, text.encode("utf-8"), content_type)

    @_through_breaker
    def delete_file(self, bucket_name: str, object_name: str) -> None:
        """Remove the object; a missing object or bucket is not an error."""
        bucket = validate_bucket_name(bucket_name)
        name = validate_object_name(object_name)
        try:
            self._client.remove_object(bucket, name)
        except S3Error as exc:
            if exc.code != "NoSuchBucket":
                self._raise(exc, f"delete of {bucket}/{name}")
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._raise(exc, f"delete of {bucket}/{name}")

    # --- reads ----------------------------------------------------------------------------------------
    @_through_breaker
    def download_file(self, bucket_name: str, object_name: str) -> bytes:
        """The object's bytes. Raises NotFound naming bucket and object."""
        bucket = validate_bucket_name(bucket_name)
        name = validate_object_name(object_name)
        try:
            response = self._client.get_object(bucket, name)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._raise(exc, f"object {bucket}/{name}")

    @_through_breaker
    def stat(self, bucket_name: str, object_name: str) -> ObjectInfo:
        """Size, content type and modification time. Raises NotFound naming bucket and object."""
        bucket = validate_bucket_name(bucket_name)
        name = validate_object_name(object_name)
        try:
            found = self._client.stat_object(bucket, name)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._raise(exc, f"object {bucket}/{name}")
        return ObjectInfo(
            bucket=bucket,
            name=name,
            size=int(found.size or 0),
            content_type=found.content_type or DEFAULT_CONTENT_TYPE,
            modified=found.last_modified,
        )

    def exists(self, bucket_name: str, object_name: str) -> bool:
        """Whether the object exists (False for a missing bucket too)."""
        try:
            self.stat(bucket_name, object_name)
        except NotFound:
            return False
        return True

    @_through_breaker
    def list_files(self, bucket_name: str, prefix: str = "") -> list[str]:
        """Names of the bucket's objects starting with ``prefix``, sorted; ``[]`` for a missing bucket
        (buckets are created on first write, so one never written holds nothing)."""
        bucket = validate_bucket_name(bucket_name)
        if not isinstance(prefix, str):
            raise InvalidInput(f"prefix must be a string, got {type(prefix).__name__}")
        try:
            names = [
                str(item.object_name)
                for item in self._client.list_objects(bucket, prefix=prefix or None, recursive=True)
                if item.object_name is not None
            ]
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return []
            self._raise(exc, f"listing of bucket {bucket}")
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._raise(exc, f"listing of bucket {bucket}")
        return sorted(names)

    def get_presigned_url(
        self,
        bucket_name: str,
        object_name: str,
        expires: timedelta = DEFAULT_EXPIRES,
        *,
        issued_at: datetime | None = None,
    ) -> str:
        """A URL on the public endpoint that GETs the object until ``issued_at + expires``. Signed locally;
        the object need not exist yet. Raises InvalidInput for bad names or ``expires``."""
        bucket = validate_bucket_name(bucket_name)
        name = validate_object_name(object_name)
        validate_expires(expires)
        return self._signer.presigned_get_object(bucket, name, expires=expires, request_date=issued_at)

    # --- health ---------------------------------------------------------------------------------------
    def health_check(self) -> dict[str, Any]:
        """Healthy when MinIO answers a signed request (listing buckets); unhealthy says why."""
        try:
            buckets = len(self._client.list_buckets())
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            return {
                "status": "unhealthy",
                "backend": self.backend,
                "endpoint": self.endpoint,
                "error": str(exc),
            }
        return {"status": "healthy", "backend": self.backend, "endpoint": self.endpoint, "buckets": buckets}
