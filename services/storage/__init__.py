"""The guide's storage service: ``get_storage_service()`` returns the backend ``STORAGE_BACKEND`` names.

``local`` (default) keeps objects as files under ``DATA_DIR/objects``; ``minio`` talks to MinIO/S3. Both keep
the :class:`~services.storage.base.StorageService` contract. The service is built on first use in each process
(a forked worker builds its own), never at import.
"""

from __future__ import annotations

import os
import threading

from services.storage.base import FileData, ObjectInfo, StorageService

__all__ = ["FileData", "ObjectInfo", "StorageService", "get_storage_service", "reset_storage_service"]

_lock = threading.Lock()
_instance: tuple[int, StorageService] | None = None


def _build() -> StorageService:
    from config import get_settings

    backend = get_settings().storage_backend
    if backend == "minio":
        from services.storage.minio_backend import MinioStorage

        return MinioStorage.from_settings()
    from services.storage.local import LocalStorage

    return LocalStorage.from_settings()


def get_storage_service() -> StorageService:
    """The process's storage service, built from settings on first call (and again after a fork).
    Raises ConfigurationError when the settings cannot make a working backend."""
    global _instance  # noqa: PLW0603 - the one cached instance per process
    current = _instance
    if current is not None and current[0] == os.getpid():
        return current[1]
    with _lock:
        if _instance is None or _instance[0] != os.getpid():
            _instance = (os.getpid(), _build())
        return _instance[1]


def reset_storage_service() -> None:
    """Forget the cached service so the next call reads settings again (tests, configuration changes)."""
    global _instance  # noqa: PLW0603 - the one cached instance per process
    with _lock:
        _instance = None
