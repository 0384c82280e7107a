"""The guide's storage service: ``get_storage_service()`` returns the backend ``STORAGE_BACKEND`` names.

``local`` (default) keeps objects as files under ``DATA_DIR/objects``; ``minio`` talks to MinIO/S3. Both keep
the :class:`~services.storage.base.StorageService` contract. The service is built on first use in each process
(a forked worker builds its own), never at import.
"""

from __future__ import annotations

from fabric.registry import PerProcess
from services.storage.base import FileData, ObjectInfo, StorageService

__all__ = ["FileData", "ObjectInfo", "StorageService", "get_storage_service", "reset_storage_service"]


def _build() -> StorageService:
    from config import get_settings

    backend = get_settings().storage_backend
    if backend == "minio":
        from services.storage.minio_backend import MinioStorage

        return MinioStorage.from_settings()
    from services.storage.local import LocalStorage

    return LocalStorage.from_settings()


_service: PerProcess[StorageService] = PerProcess("storage service", _build)


def get_storage_service() -> StorageService:
    """The process's storage service, built from settings on first call (and again after a fork, see
    :mod:`fabric.registry`). Raises ConfigurationError when the settings cannot make a working backend."""
    return _service.get()


def reset_storage_service() -> None:
    """Forget the process's service so the next call reads settings again (tests, configuration changes)."""
    _service.reset()
