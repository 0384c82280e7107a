"""Serves the local store's presigned URLs over HTTP.

``router`` is an ``APIRouter`` the API mounts (at the path prefix of ``STORAGE_PUBLIC_URL``); it answers
``GET /files/{bucket}/{object}?expires=..&signature=..`` with the object's bytes and content type, 403 for a
tampered or expired URL, 404 for a missing object. Run it on its own with::

    python -m api.presign --host 127.0.0.1 --port 8001
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from fastapi.responses import StreamingResponse

from fabric.errors import InvalidInput, NotFound
from services.storage import get_storage_service
from services.storage.local import LocalStorage, SignatureRefused

log = logging.getLogger(__name__)

router = APIRouter(tags=["storage"])


def local_storage() -> LocalStorage:
    """The process's storage service when it is the local store (a dependency; tests override it).
    Raises HTTP 404 when storage is MinIO, whose presigned URLs point at MinIO itself."""
    service = get_storage_service()
    if not isinstance(service, LocalStorage):
        raise HTTPException(
            404, f"presigned URLs of the {service.backend} backend are served by that backend"
        )
    return service


@router.get("/files/{bucket}/{object_name:path}", name="storage_presigned_get")
def presigned_get(
    bucket: str,
    object_name: str,
    storage: Annotated[LocalStorage, Depends(local_storage)],
    expires: Annotated[str, Query()] = "",
    signature: Annotated[str, Query()] = "",
) -> StreamingResponse:
    """The object's bytes with its content type, when the URL's signature matches and has not expired."""
    try:
        storage.verify_presigned(bucket, object_name, expires, signature)
    except SignatureRefused as exc:
        log.info("presigned URL refused: %s", exc)
        raise HTTPException(403, "signature does not match or the URL has expired") from None
    try:
        handle, info = storage.open_object(bucket, object_name)
    except (NotFound, InvalidInput) as exc:
        raise HTTPException(404, str(exc)) from None
    return StreamingResponse(
        storage.iter_object(handle),
        headers={"content-type": info.content_type, "content-length": str(info.size)},
    )


def create_app() -> FastAPI:
    """A stand-alone app serving ``router`` plus ``GET /healthz`` (the store's health check)."""
    app = FastAPI(title="presigned object downloads")
    app.include_router(router)

    @app.get("/healthz")
    def healthz(storage: Annotated[LocalStorage, Depends(local_storage)]) -> dict[str, Any]:
        return storage.health_check()

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Run the stand-alone app with uvicorn."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
