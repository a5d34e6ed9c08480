"""/v1/files"""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from sqlmodel import select

from api.deps import ProjectDep, SessionDep, SettingsDep, StorageDep
from api.errors import not_found
from api.schemas import FileDeleted, FileObject, ListPage
from api.services import files as svc
from api.services.pagination import page
from api.tables import File

router = APIRouter(tags=["files"])


@router.post("/files", response_model=FileObject)
async def upload_file(
    request: Request, settings: SettingsDep, session: SessionDep, storage: StorageDep, project: ProjectDep
) -> FileObject:
    up = await svc.receive_upload(request, settings)
    row = svc.create_file(session, storage, project, up)
    if row.status == "uploaded":
        request.app.state.file_validator.submit(row.id)
    return svc.to_wire(row)


@router.get("/files", response_model=ListPage[FileObject])
def list_files(session: SessionDep, project: ProjectDep, after: str | None = None, limit: int = 10_000,
               order: Literal["asc", "desc"] = "desc", purpose: str | None = None) -> ListPage[FileObject]:
    stmt = select(File).where(File.project_id == project.id)
    if purpose:
        stmt = stmt.where(File.purpose == purpose)
    rows, more = page(session, stmt, File, after=after, limit=limit, order=order)
    data = [svc.to_wire(f) for f in rows]
    return ListPage.of(data, more)


@router.get("/files/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, session: SessionDep, project: ProjectDep) -> FileObject:
    return svc.to_wire(svc.get_file(session, project, file_id))


def _content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII `filename` for old clients (quotes, backslashes, control and non-ASCII characters
    made `_`) and the exact name as RFC 5987 `filename*`. The name put in raw broke the header: a 500 on a
    non-latin-1 character, a dropped connection on a NUL, a parameter of the uploader's choice after a quote."""
    ascii_name = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.get("/files/{file_id}/content")
def file_content(file_id: str, session: SessionDep, project: ProjectDep, storage: StorageDep) -> StreamingResponse:
    f = svc.get_file(session, project, file_id)
    try:
        chunks = storage.iter_bytes(f.storage_key)
    except FileNotFoundError:  # deleted by a concurrent request since get_file: gone, as it now is in the table
        raise not_found("file", file_id) from None
    return StreamingResponse(
        chunks, media_type="application/octet-stream",
        headers={"content-disposition": _content_disposition(f.filename), "content-length": str(f.bytes)},
    )


@router.delete("/files/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, session: SessionDep, project: ProjectDep, storage: StorageDep) -> FileDeleted:
    f = svc.get_file(session, project, file_id)
    svc.delete_file(session, storage, f)
    return FileDeleted(id=file_id, deleted=True)
