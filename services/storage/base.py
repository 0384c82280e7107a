"""The storage contract every backend keeps, and the name rules every backend enforces.

A backend is one module beside this one (``local.py``, ``minio_backend.py``). Names are checked here, before
any backend touches a disk or a socket, so a name that could escape its bucket is refused the same way
everywhere and nothing is written.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, BinaryIO, Protocol, runtime_checkable

from fabric.errors import InvalidInput

#: What ``upload_file`` accepts: the bytes themselves or a binary file object read to its end.
FileData = bytes | bytearray | memoryview | BinaryIO

DEFAULT_CONTENT_TYPE = "application/octet-stream"
DEFAULT_EXPIRES = timedelta(hours=1)
#: S3 (and MinIO) refuse presigned URLs valid longer than this.
MAX_EXPIRES = timedelta(days=7)
MAX_OBJECT_NAME_BYTES = 1024
#: Read and write large objects in pieces of this size, never whole.
CHUNK_SIZE = 1024 * 1024

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_CONTENT_TYPE_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*;.*)?$")


@dataclass(frozen=True)
class ObjectInfo:
    """What a backend knows about a stored object besides its bytes."""

    bucket: str
    name: str
    size: int
    content_type: str
    modified: datetime | None = None


@runtime_checkable
class StorageService(Protocol):
    """The guide's storage service. Every method validates names first and raises from the error tree:
    :class:`~fabric.errors.InvalidInput` for a bad bucket or object name, :class:`~fabric.errors.NotFound`
    for a missing object, :class:`~fabric.errors.BackendUnavailable` when the backend does not answer."""

    backend: str

    def upload_file(
        self,
        bucket_name: str,
        object_name: str,
        file_data: FileData,
        content_type: str | None = DEFAULT_CONTENT_TYPE,
    ) -> str:
        """Store ``file_data`` (bytes, or a binary file object read to its end in chunks) under
        ``bucket_name/object_name``, replacing any earlier object of that name. The bucket is created if
        needed. ``content_type`` None (an upload that came without one) stores ``application/octet-stream``.
        Returns ``"bucket/object"``."""
        ...

    def upload_text(
        self, bucket_name: str, object_name: str, text: str, content_type: str = "text/plain; charset=utf-8"
    ) -> str:
        """Store ``text`` encoded as UTF-8. Returns ``"bucket/object"``."""
        ...

    def download_file(self, bucket_name: str, object_name: str) -> bytes:
        """The object's bytes. Raises NotFound naming bucket and object when it does not exist."""
        ...

    def stat(self, bucket_name: str, object_name: str) -> ObjectInfo:
        """Size and content type of the object. Raises NotFound when it does not exist."""
        ...

    def exists(self, bucket_name: str, object_name: str) -> bool:
        """Whether the object exists (a missing bucket is simply False)."""
        ...

    def delete_file(self, bucket_name: str, object_name: str) -> None:
        """Remove the object. Removing an object that is not there is not an error (as on S3), so a
        redelivered cleanup task changes nothing."""
        ...

    def list_files(self, bucket_name: str, prefix: str = "") -> list[str]:
        """Names of the objects in the bucket that start with ``prefix``, sorted. A bucket that was never
        written to holds nothing: the answer is ``[]``."""
        ...

    def get_presigned_url(
        self,
        bucket_name: str,
        object_name: str,
        expires: timedelta = DEFAULT_EXPIRES,
        *,
        issued_at: datetime | None = None,
    ) -> str:
        """A URL anyone can GET the object from until ``expires`` after ``issued_at`` (default: now; a past
        ``issued_at`` serves tests and clock skew). ``expires`` must be between 1 second and 7 days."""
        ...

    def health_check(self) -> dict[str, Any]:
        """``{"status": "healthy"|"unhealthy", "backend": ..., ...}``; an unhealthy answer says why."""
        ...


def validate_bucket_name(bucket_name: str) -> str:
    """Check ``bucket_name`` against the S3 bucket naming rules. Returns it; raises InvalidInput naming the
    problem."""
    if not isinstance(bucket_name, str):
        raise InvalidInput(f"bucket name must be a string, got {type(bucket_name).__name__}")
    if not 3 <= len(bucket_name) <= 63:
        raise InvalidInput(f"bucket name {bucket_name!r} must be 3 to 63 characters long")
    if not _BUCKET_RE.match(bucket_name):
        raise InvalidInput(
            f"bucket name {bucket_name!r} may hold only lowercase letters, digits, dots and hyphens, "
            "and must start and end with a letter or digit"
        )
    if ".." in bucket_name or ".-" in bucket_name or "-." in bucket_name:
        raise InvalidInput(f"bucket name {bucket_name!r} must not have '..', '.-' or '-.'")
    if _IPV4_RE.match(bucket_name):
        raise InvalidInput(f"bucket name {bucket_name!r} must not look like an IP address")
    return bucket_name


def validate_object_name(object_name: str) -> str:
    """Refuse an object name that could escape its bucket on any backend or that a filesystem cannot hold
    one-to-one: empty, over 1024 bytes of UTF-8, a leading ``/``, a ``\\``, a NUL or other control character,
    an empty, ``.`` or ``..`` segment. Returns the name; raises InvalidInput naming the problem."""
    if not isinstance(object_name, str):
        raise InvalidInput(f"object name must be a string, got {type(object_name).__name__}")
    if not object_name:
        raise InvalidInput("object name must not be empty")
    try:
        size = len(object_name.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"object name {object_name!r} is not valid UTF-8: {exc.reason}") from exc
    if size > MAX_OBJECT_NAME_BYTES:
        raise InvalidInput(
            f"object name is {size} bytes of UTF-8; the limit is {MAX_OBJECT_NAME_BYTES} "
            f"(name starts {object_name[:40]!r})"
        )
    if "\x00" in object_name:
        raise InvalidInput(f"object name {object_name!r} contains a NUL byte")
    if _CONTROL_RE.search(object_name):
        raise InvalidInput(f"object name {object_name!r} contains a control character")
    if "\\" in object_name:
        raise InvalidInput(f"object name {object_name!r} contains a backslash; use '/' to separate segments")
    if object_name.startswith("/"):
        raise InvalidInput(
            f"object name {object_name!r} is an absolute path; names are relative to the bucket"
        )
    for segment in object_name.split("/"):
        if segment in (".", ".."):
            raise InvalidInput(
                f"object name {object_name!r} has a {segment!r} segment, which could leave its bucket"
            )
        if not segment:
            raise InvalidInput(f"object name {object_name!r} has an empty segment (a '//' or a trailing '/')")
    return object_name


def validate_expires(expires: timedelta) -> int:
    """Seconds of validity of a presigned URL; raises InvalidInput outside 1 second .. 7 days."""
    if not isinstance(expires, timedelta):
        raise InvalidInput(f"expires must be a timedelta, got {type(expires).__name__}")
    seconds = int(expires.total_seconds())
    if not 1 <= seconds <= int(MAX_EXPIRES.total_seconds()):
        raise InvalidInput(f"expires must be between 1 second and 7 days, got {expires}")
    return seconds


def validate_content_type(content_type: str | None) -> str:
    """The content type to store (None means ``application/octet-stream``, as from an upload without one);
    raises InvalidInput for a value that is not ``type/subtype[; params]``."""
    if content_type is None or content_type == "":
        return DEFAULT_CONTENT_TYPE
    if (
        not isinstance(content_type, str)
        or _CONTROL_RE.search(content_type)
        or not _CONTENT_TYPE_RE.match(content_type)
    ):
        raise InvalidInput(f"content type {content_type!r} is not of the form type/subtype")
    return content_type


def iter_chunks(file_data: FileData, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The bytes of ``file_data`` in pieces of at most ``chunk_size``: a file object is read piece by piece
    from its current position, never whole. Raises InvalidInput at once for text or other types."""
    if isinstance(file_data, bytes | bytearray | memoryview):
        return _iter_buffer(memoryview(file_data).cast("B"), chunk_size)
    if isinstance(file_data, io.TextIOBase) or not hasattr(file_data, "read"):
        raise InvalidInput(
            f"file_data must be bytes or a binary file object, got {type(file_data).__name__}; "
            "use upload_text for text"
        )
    return _iter_stream(file_data, chunk_size)


def _iter_buffer(view: memoryview, chunk_size: int) -> Iterator[bytes]:
    for start in range(0, len(view), chunk_size):
        yield bytes(view[start : start + chunk_size])


def _iter_stream(file_data: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    while True:
        chunk = file_data.read(chunk_size)
        if not chunk:
            return
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise InvalidInput(
                f"file_data.read() returned {type(chunk).__name__}, not bytes; open the file in binary mode"
            )
        yield bytes(chunk)
