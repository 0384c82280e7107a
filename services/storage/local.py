"""The embedded object store: buckets as directories on the local filesystem.

Layout under ``root`` (``DATA_DIR/objects``)::

    {bucket}/{object name}         the bytes, one file per object ('/' in a name makes directories); the
                                   content type in the file's ``user.mime_type`` extended attribute
    .meta/{bucket}/{object name}   a JSON sidecar with the content type, only where the filesystem has no
                                   user extended attributes, or for objects stored by an earlier version
                                   (never listed)
    .tmp/                          uploads in progress, renamed into place when complete
    .locks/{bucket}.lock           flock(2) target that pairs an object with its sidecar

Bucket names cannot start with a dot, so the three reserved directories never clash with a bucket.

Writes stream into a temporary file on the same filesystem and are moved into place with ``os.replace``, so a
reader sees the old object or the new one, never half of one, and a crashed upload leaves nothing behind but a
file in ``.tmp``. The content type is set on the temporary file before the rename, so bytes and type are
installed by one rename and a reader takes both from the file it opened: several worker processes can write
and read the same object at once and a reader never pairs the bytes of one upload with the content type of
another. One file per object also halves the files an upload creates (creating a file is the costliest
step of a small write: half a millisecond of kernel time on some virtual disks). Where extended attributes are
missing (some network and FUSE filesystems, platforms other than Linux) the store falls back to the sidecar,
and then the two renames happen under an exclusive lock on the bucket and readers take a shared one. The lock
is held only for the renames, never while bytes stream.

Presigned URLs are ``{public_url}/files/{bucket}/{object}?expires=<unix time>&signature=<hex>``, the signature
an HMAC-SHA256 of method, bucket, object and expiry under ``STORAGE_SIGNING_KEY``; ``api.presign`` serves
them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

from fabric.errors import BackendUnavailable, ConfigurationError, InvalidInput, NotFound, PermanentError
from services.storage.base import (
    CHUNK_SIZE,
    DEFAULT_CONTENT_TYPE,
    DEFAULT_EXPIRES,
    FileData,
    ObjectInfo,
    iter_chunks,
    validate_bucket_name,
    validate_content_type,
    validate_expires,
    validate_object_name,
)

_RESERVED = (".meta", ".tmp", ".locks")
_T = TypeVar("_T")

#: The extended attribute that holds an object's content type (the name freedesktop.org's shared MIME
#: database reads).
CONTENT_TYPE_XATTR = "user.mime_type"
#: The errors of a filesystem without user extended attributes.
_NO_XATTRS = {errno.ENOTSUP, errno.EOPNOTSUPP}
#: Attempts at installing an upload whose parent directory a concurrent delete pruned meanwhile.
_INSTALL_ATTEMPTS = 20


class SignatureRefused(PermanentError):
    """A presigned URL whose signature does not match, or whose expiry has passed. Served as 403."""


#: Failures of the disk under DATA_DIR, as opposed to a bad name or a broken upload stream.
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NOT_PERMITTED = {errno.EACCES, errno.EPERM, errno.EROFS}


@contextlib.contextmanager
def _disk_errors(root: Path, what: str) -> Iterator[None]:
    """Map the store's own disk failures onto the error tree; other errors (such as a client's stream
    breaking mid-upload) pass through unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise BackendUnavailable(f"no space left under {root} for {what}: {exc}") from exc
        if exc.errno in _NOT_PERMITTED:
            raise ConfigurationError(
                f"the local store cannot use {root} for {what} ({exc}); check DATA_DIR and its permissions"
            ) from exc
        raise


class LocalStorage:
    """Objects as files under ``root``. Safe to share between threads and between processes."""

    backend = "local"

    def __init__(
        self,
        root: Path,
        signing_key: str | bytes,
        public_url: str,
        *,
        clock: Callable[[], float] = time.time,
        fsync: bool = True,
        xattrs: bool | None = None,
    ) -> None:
        """``root`` is created on first write; ``signing_key`` signs presigned URLs that point at
        ``public_url`` (scheme, host and any path prefix under which ``api.presign``'s router is mounted).
        ``clock`` gives the current Unix time (tests pass a fixed one); ``fsync`` makes each write durable
        before it is renamed into place. ``xattrs``: keep content types in extended attributes (None: where
        the filesystem has them, found at the first write; False: in sidecars)."""
        key = signing_key.encode("utf-8") if isinstance(signing_key, str) else signing_key
        if not key:
            raise InvalidInput("the storage signing key must not be empty")
        self.root = Path(root)
        self.public_url = public_url.rstrip("/")
        self._key = key
        self._clock = clock
        self._fsync = fsync
        self._xattrs = xattrs if hasattr(os, "setxattr") else False

    @classmethod
    def from_settings(cls) -> LocalStorage:
        """The store configured by ``DATA_DIR``, ``STORAGE_SIGNING_KEY`` and ``STORAGE_PUBLIC_URL``."""
        from config import get_settings

        settings = get_settings()
        return cls(
            settings.data_dir / "objects",
            settings.storage_signing_key.get_secret_value(),
            settings.storage_public_url,
        )

    # --- paths and locks ---------------------------------------------------------------------------
    def _paths(self, bucket_name: str, object_name: str) -> tuple[str, str, Path, Path]:
        bucket = validate_bucket_name(bucket_name)
        name = validate_object_name(object_name)
        for segment in name.split("/"):
            if len(segment.encode("utf-8")) > 255:
                raise InvalidInput(
                    f"object name {name[:60]!r}... has a segment longer than 255 bytes, which the local "
                    "filesystem store cannot hold"
                )
        return bucket, name, self.root / bucket / name, self.root / ".meta" / bucket / name

    @contextlib.contextmanager
    def _bucket_lock(self, bucket: str, exclusive: bool) -> Iterator[None]:
        lock_dir = self.root / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / f"{bucket}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _temp_file(self, bucket: str) -> tuple[int, Path]:
        tmp_dir = self.root / ".tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=tmp_dir, prefix=f"{bucket}.")
        return fd, Path(path)

    # --- writes ---------------------------------------------------------------------------------------
    def upload_file(
        self,
        bucket_name: str,
        object_name: str,
        file_data: FileData,
        content_type: str | None = DEFAULT_CONTENT_TYPE,
    ) -> str:
        """Store ``file_data`` (bytes or a binary file object, streamed in 1 MiB chunks) as
        ``bucket/object``, replacing an earlier object atomically. Returns ``"bucket/object"``.
        Raises InvalidInput for a bad name, content type or data type, or a name that clashes with an
        existing object used as a directory (``a`` and ``a/b``); nothing is written then."""
        bucket, name, data_path, meta_path = self._paths(bucket_name, object_name)
        content_type = validate_content_type(content_type)
        chunks = iter_chunks(file_data)
        with _disk_errors(self.root, f"upload of {bucket}/{name}"):
            return self._write(bucket, name, data_path, meta_path, chunks, content_type)

    def _write(
        self,
        bucket: str,
        name: str,
        data_path: Path,
        meta_path: Path,
        chunks: Iterator[bytes],
        content_type: str,
    ) -> str:
        data_fd, data_tmp = self._temp_file(bucket)
        meta_tmp: Path | None = None
        try:
            size = 0
            with os.fdopen(data_fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                in_xattr = self._set_content_type(out.fileno(), content_type)
                if self._fsync:
                    os.fsync(out.fileno())
            if in_xattr:
                self._install(bucket, name, data_tmp, data_path)
            else:
                meta_fd, meta_tmp = self._temp_file(bucket)
                with os.fdopen(meta_fd, "w", encoding="utf-8") as meta:
                    json.dump({"content_type": content_type, "size": size}, meta)
                with self._bucket_lock(bucket, exclusive=True):
                    self._install(bucket, name, data_tmp, data_path)
                    self._install(bucket, name, meta_tmp, meta_path)
            if self._fsync:
                self._fsync_dir(data_path.parent)  # make the rename itself survive a power cut
        finally:
            for leftover in (data_tmp, meta_tmp):
                if leftover is not None:
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
        return f"{bucket}/{name}"

    def _set_content_type(self, fd: int, content_type: str) -> bool:
        """Put the content type on the open upload ``fd``; False when this filesystem has no user extended
        attributes (the caller writes a sidecar, and so does every later write of this store)."""
        if self._xattrs is False:
            return False
        try:
            os.setxattr(fd, CONTENT_TYPE_XATTR, content_type.encode("utf-8"))
        except OSError as exc:
            if exc.errno not in _NO_XATTRS:
                raise
            self._xattrs = False
            return False
        self._xattrs = True
        return True

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        try:
            fd = os.open(directory, os.O_RDONLY)
        except FileNotFoundError:
            return  # another process deleted the object and pruned its directory meanwhile
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _install(self, bucket: str, name: str, source: Path, target: Path) -> None:
        try:
            for attempt in range(_INSTALL_ATTEMPTS):
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(source, target)
                    break
                except (FileNotFoundError, FileExistsError) as exc:
                    # Uploads that keep their type in an extended attribute take no lock, so a delete can
                    # prune a parent directory while it is made (mkdir finds it, then it is gone) or before
                    # the rename: make it again. A file in the way is a real clash.
                    blocked = isinstance(exc, FileExistsError) and any(
                        parent.is_file() for parent in target.parents if self.root in parent.parents
                    )
                    if blocked or attempt == _INSTALL_ATTEMPTS - 1 or not source.exists():
                        raise
        except (FileExistsError, NotADirectoryError) as exc:
            raise InvalidInput(
                f"cannot store {bucket}/{name}: an object named like one of its parent segments exists "
                f"({exc.filename}); an object name cannot also be a prefix directory on the local store"
            ) from exc
        except IsADirectoryError as exc:
            raise InvalidInput(
                f"cannot store {bucket}/{name}: objects named {name}/... exist, so the local store cannot "
                "hold an object of that exact name"
            ) from exc
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise InvalidInput(f"object name {name[:60]!r} is too long for the local filesystem") from exc
            raise

    def upload_text(
        self, bucket_name: str, object_name: str, text: str, content_type: str = "text/plain; charset=utf-8"
    ) -> str:
        """Store ``text`` as UTF-8. Returns ``"bucket/object"``; raises InvalidInput as ``upload_file``."""
        if not isinstance(text, str):
            raise InvalidInput(f"text must be a str, got {type(text).__name__}; use upload_file for bytes")
        return self.upload_file(bucket_name, object_name, text.encode("utf-8"), content_type)

    def delete_file(self, bucket_name: str, object_name: str) -> None:
        """Remove the object and its sidecar, and any directories left empty. Removing a missing object
        is not an error."""
        bucket, name, data_path, meta_path = self._paths(bucket_name, object_name)
        with _disk_errors(self.root, f"delete of {bucket}/{name}"), self._bucket_lock(bucket, exclusive=True):
            for path, top in ((data_path, self.root / bucket), (meta_path, self.root / ".meta" / bucket)):
                try:
                    path.unlink()
                except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                    continue
                self._prune(path.parent, top)

    @staticmethod
    def _prune(directory: Path, top: Path) -> None:
        # Writers create parents and rename under the same exclusive lock, so an empty directory removed
        # here cannot be one a writer is about to fill.
        while directory != top and top in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    # --- reads ----------------------------------------------------------------------------------------
    def open_object(self, bucket_name: str, object_name: str) -> tuple[IO[bytes], ObjectInfo]:
        """An open binary file of the object (the caller closes it) and its info, taken together so the
        content type belongs to these bytes even while another process replaces the object. Raises
        NotFound naming bucket and object."""
        bucket, name, data_path, meta_path = self._paths(bucket_name, object_name)
        with _disk_errors(self.root, f"read of {bucket}/{name}"):
            content_type: str | None = None
            if self._xattrs is not False:
                handle = self._open_data(bucket, name, data_path)
                content_type = self._guarded(handle, lambda: self._content_type_of(handle))
                if content_type is None:
                    handle.close()
            if content_type is None:
                # No type on the file: a filesystem without extended attributes, or an object stored by an
                # earlier version. Its sidecar is renamed in under the bucket's lock, so read both under it;
                # the file opened there may be a newer upload, with its type on it.
                with self._bucket_lock(bucket, exclusive=False):
                    handle = self._open_data(bucket, name, data_path)
                    content_type = self._guarded(
                        handle, lambda: self._content_type_of(handle) or self._sidecar_type(meta_path)
                    )
        stat = os.fstat(handle.fileno())
        info = ObjectInfo(
            bucket=bucket,
            name=name,
            size=stat.st_size,
            content_type=content_type,
            modified=datetime.fromtimestamp(stat.st_mtime, UTC),
        )
        return handle, info

    @staticmethod
    def _open_data(bucket: str, name: str, data_path: Path) -> IO[bytes]:
        try:
            return data_path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFound(f"object {bucket}/{name} does not exist") from exc

    @staticmethod
    def _guarded(handle: IO[bytes], read: Callable[[], _T]) -> _T:
        """``read()``, closing ``handle`` if it raises."""
        try:
            return read()
        except BaseException:
            handle.close()
            raise

    @staticmethod
    def _sidecar_type(meta_path: Path) -> str:
        try:
            meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            meta = {}  # a crash between the two renames: the bytes are whole, the type unknown
        return str(meta.get("content_type") or DEFAULT_CONTENT_TYPE)

    @staticmethod
    def _content_type_of(handle: IO[bytes]) -> str | None:
        """The content type on the open object's file, or None when it has none."""
        if not hasattr(os, "getxattr"):
            return None
        try:
            return os.getxattr(handle.fileno(), CONTENT_TYPE_XATTR).decode("utf-8")
        except OSError as exc:
            if exc.errno == errno.ENODATA or exc.errno in _NO_XATTRS:  # none on this file
                return None
            raise

    def download_file(self, bucket_name: str, object_name: str) -> bytes:
        """The object's bytes. Raises NotFound naming bucket and object."""
        handle, _info = self.open_object(bucket_name, object_name)
        with handle:
            return handle.read()

    def iter_object(self, handle: IO[bytes], chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The rest of an open object in chunks, closing it at the end (for streaming responses)."""
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def stat(self, bucket_name: str, object_name: str) -> ObjectInfo:
        """Size, content type and modification time. Raises NotFound naming bucket and object."""
        handle, info = self.open_object(bucket_name, object_name)
        handle.close()
        return info

    def exists(self, bucket_name: str, object_name: str) -> bool:
        """Whether the object exists."""
        _bucket, _name, data_path, _meta = self._paths(bucket_name, object_name)
        return data_path.is_file()

    def list_files(self, bucket_name: str, prefix: str = "") -> list[str]:
        """Names of the bucket's objects starting with ``prefix``, sorted; ``[]`` for a bucket never
        written."""
        bucket = validate_bucket_name(bucket_name)
        if not isinstance(prefix, str):
            raise InvalidInput(f"prefix must be a string, got {type(prefix).__name__}")
        top = self.root / bucket
        start = top
        # Walk only the directory the prefix names, when its directory part is a safe name.
        directory, _, _ = prefix.rpartition("/")
        if directory:
            with contextlib.suppress(InvalidInput):
                start = top / validate_object_name(directory)
        names: list[str] = []
        for dirpath, _dirnames, filenames in os.walk(start):
            relative = Path(dirpath).relative_to(top).as_posix()
            base = "" if relative == "." else relative + "/"
            names.extend(base + filename for filename in filenames if (base + filename).startswith(prefix))
        return sorted(names)

    # --- presigned URLs -------------------------------------------------------------------------------
    def _signature(self, bucket: str, name: str, expires_at: int) -> str:
        message = f"GET\n{bucket}\n{name}\n{expires_at}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def get_presigned_url(
        self,
        bucket_name: str,
        object_name: str,
        expires: timedelta = DEFAULT_EXPIRES,
        *,
        issued_at: datetime | None = None,
    ) -> str:
        """A URL under ``public_url`` that serves the object until ``issued_at + expires``. The object need
        not exist yet (as on S3: fetching a missing one answers 404). Raises InvalidInput for bad names or
        an ``expires`` outside 1 second .. 7 days."""
        bucket, name, _data, _meta = self._paths(bucket_name, object_name)
        seconds = validate_expires(expires)
        start = issued_at.timestamp() if issued_at is not None else self._clock()
        expires_at = int(start) + seconds
        signature = self._signature(bucket, name, expires_at)
        path = f"/files/{bucket}/{quote(name, safe='/')}"
        return f"{self.public_url}{path}?expires={expires_at}&signature={signature}"

    def verify_presigned(self, bucket_name: str, object_name: str, expires: str, signature: str) -> None:
        """Check a presigned URL's parts (as decoded from the request). Raises SignatureRefused when the
        signature does not match or the expiry has passed."""
        try:
            expires_at = int(expires)
        except ValueError:
            raise SignatureRefused(f"expires {expires!r} is not a Unix time") from None
        expected = self._signature(bucket_name, object_name, expires_at)
        if not hmac.compare_digest(expected, signature):
            raise SignatureRefused(f"signature does not match {bucket_name}/{object_name}")
        if self._clock() > expires_at:
            raise SignatureRefused(f"URL for {bucket_name}/{object_name} expired at {expires_at}")

    def purge_stale_uploads(self, older_than: timedelta = timedelta(hours=24)) -> int:
        """Remove temporary files of uploads that a crashed process left in ``.tmp`` more than
        ``older_than`` ago (a maintenance task calls this). Returns how many were removed."""
        tmp_dir = self.root / ".tmp"
        if not tmp_dir.is_dir():
            return 0
        cutoff = self._clock() - older_than.total_seconds()
        removed = 0
        for entry in os.scandir(tmp_dir):
            with contextlib.suppress(FileNotFoundError):  # its upload finished or another purge won
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
        return removed

    # --- health ---------------------------------------------------------------------------------------
    def health_check(self) -> dict[str, Any]:
        """Healthy when a file can be created under ``root``; reports free bytes."""
        try:
            fd, probe = self._temp_file("health")
            os.close(fd)
            probe.unlink()
            usage = shutil.disk_usage(self.root)
        except OSError as exc:
            return {"status": "unhealthy", "backend": self.backend, "root": str(self.root), "error": str(exc)}
        return {
            "status": "healthy",
            "backend": self.backend,
            "root": str(self.root),
            "free_bytes": usage.free,
        }
