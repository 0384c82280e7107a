"""The guide's file endpoints: upload to ``user-uploads/uploads/{filename}`` and download from there."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, Path, UploadFile
from fastapi.responses import Response, StreamingResponse

from api.auth import READ, WRITE
from api.schemas import AUTH, BINARY, UploadedFile, error_responses
from fabric.errors import InvalidInput
from services.storage import get_storage_service
from services.storage.local import LocalStorage

router = APIRouter(tags=["files"])

UPLOADS_BUCKET = "user-uploads"
UPLOADS_PREFIX = "uploads/"


@router.post(
    "/upload",
    dependencies=[WRITE],
    status_code=201,
    responses=error_responses(
        *AUTH, 400, 413, 422, 503, notes={422: "no file part, or a filename the store refuses"}
    ),
)
def upload_file(file: Annotated[UploadFile, File(description="the file to store")]) -> UploadedFile:
    """Store the file as ``user-uploads/uploads/{filename}`` (replacing one of that name). Returns
    ``file_path``, a presigned ``download_url`` and the ``filename``. A filename the store refuses (``..``,
    a leading ``/``, control characters ...) answers 422."""
    filename = file.filename
    if not filename:
        raise InvalidInput("the uploaded file has no filename")
    storage = get_storage_service()
    object_name = UPLOADS_PREFIX + filename
    file_path = storage.upload_file(
        bucket_name=UPLOADS_BUCKET,
        object_name=object_name,
        file_data=file.file,
        content_type=file.content_type,
    )
    download_url = storage.get_presigned_url(UPLOADS_BUCKET, object_name)
    return UploadedFile(file_path=file_path, download_url=download_url, filename=filename)


@router.get(
    "/download/{file_id:path}",
    dependencies=[READ],
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": BINARY}, "description": "the file's bytes"},
        **error_responses(*AUTH, 404, 422, 503, notes={404: "no file of that name was uploaded"}),
    },
)
def download_file(file_id: Annotated[str, Path(description="the filename given at upload")]) -> Response:
    """The bytes of an uploaded file, with the content type it was uploaded with; 404 when there is none."""
    storage = get_storage_service()
    object_name = UPLOADS_PREFIX + file_id
    # The name in filename* is percent-encoded UTF-8 (RFC 6266), so no name can break the header.
    headers = {
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(file_id.rsplit('/', 1)[-1], safe='')}"
    }
    if isinstance(storage, LocalStorage):
        # Streamed in chunks from one open file: a large upload is never held in memory whole, and the
        # content type belongs to these bytes even if the object is replaced meanwhile.
        handle, info = storage.open_object(UPLOADS_BUCKET, object_name)
        headers["Content-Length"] = str(info.size)
        return StreamingResponse(storage.iter_object(handle), media_type=info.content_type, headers=headers)
    info = storage.stat(UPLOADS_BUCKET, object_name)
    content = storage.download_file(UPLOADS_BUCKET, object_name)
    return Response(content=content, media_type=info.content_type, headers=headers)
