"""/v1/files"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlmodel import select

from api.deps import ProjectDep, SessionDep, SettingsDep, StorageDep
from api.errors import not_found
from api.schemas import (
    FileBoxesRequest,
    FileDeleted,
    FileObject,
    FileRow,
    ListFileBoxesResponse,
    ListFileRowsResponse,
    ListPage,
    RowBoxes,
)
from api.services import files as svc
from api.services.graders import validated_grader
from api.services.pagination import page
from api.tables import File
from api.validation import DatasetLimits
from grader.types.iou import drawn_boxes

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


@router.post("/files/{file_id}/boxes", response_model=ListFileBoxesResponse)
def file_boxes(file_id: str, body: FileBoxesRequest, session: SessionDep, project: ProjectDep, storage: StorageDep,
               settings: SettingsDep) -> ListFileBoxesResponse:
    """The boxes each iou grader of `grader` compares on these rows of the file, for a sample or none, in
    fractions of the row's image: computed by the grader's own parsing and conversions (grader.types.iou), so
    that the dashboard draws what was scored. Our extension."""
    f = svc.get_file(session, project, file_id)
    spec = validated_grader(body.grader)
    rows = svc.rows_at(storage, f, [r.line for r in body.rows], DatasetLimits.of(settings))
    convention = body.box_convention.model_dump(exclude_none=True) if body.box_convention else None
    boxes = drawn_boxes(spec, [r.sample for r in body.rows], rows, convention)
    return ListFileBoxesResponse(data=[RowBoxes(line=r.line, graders=b) for r, b in zip(body.rows, boxes)])


MAX_ROWS = 100
"""The most rows one GET /files/{id}/rows answers (a row may hold inline images)."""


@router.get("/files/{file_id}/rows", response_model=ListFileRowsResponse)
def file_rows(
    file_id: str, session: SessionDep, project: ProjectDep, storage: StorageDep, settings: SettingsDep,
    line: Annotated[list[Annotated[int, Query(ge=1, le=2**31 - 1)]] | None, Query(
        max_length=MAX_ROWS, description="these lines (from 1, repeated: line=3&line=9), in this order; "
                                         "without it, the rows after `after`")] = None,
    after: Annotated[int, Query(ge=0, le=2**31 - 1, description="paging: the rows after this line")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_ROWS, description="paging: at most this many rows")] = 20,
) -> ListFileRowsResponse:
    """Rows of a JSONL file by line number, read from storage without sending the file: the lines asked for
    (a rollout record's `line`), or a page of rows. Our extension."""
    f = svc.get_file(session, project, file_id)
    limits = DatasetLimits.of(settings)
    if line:
        rows = svc.rows_at(storage, f, line, limits, param="line", line_param="line[{i}]")
        return ListFileRowsResponse(data=[FileRow(line=n, row=r) for n, r in zip(line, rows)], has_more=False)
    found, more = svc.rows_after(storage, f, after, limit, limits)
    return ListFileRowsResponse(data=[FileRow(line=n, row=r) for n, r in found], has_more=more)
