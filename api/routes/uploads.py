"""/v1/uploads: a large file in parts (api/services/uploads.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from api.deps import ProjectDep, SessionDep, SettingsDep, StorageDep
from api.schemas import UPLOAD_PART_MAX_BYTES, UploadComplete, UploadCreate, UploadObject, UploadPartObject
from api.services import files as file_svc
from api.services import uploads as svc

router = APIRouter(tags=["uploads"])


@router.post("/uploads", response_model=UploadObject)
def create_upload(body: UploadCreate, session: SessionDep, project: ProjectDep) -> UploadObject:
    return svc.to_wire(svc.create_upload(session, project, body=body))


@router.post("/uploads/{upload_id}/parts", response_model=UploadPartObject)
async def add_part(upload_id: str, request: Request, settings: SettingsDep, storage: StorageDep,
                   project: ProjectDep) -> UploadPartObject:
    await run_in_threadpool(svc.check_open, settings, storage, project, upload_id)
    spool = await file_svc.receive_multipart(request, settings.tmp_dir, field="data", max_bytes=UPLOAD_PART_MAX_BYTES,
                                             fields_hint="a 'data' field")
    part = await run_in_threadpool(svc.add_part, settings, storage, project, upload_id, spool)
    return svc.part_to_wire(part)


@router.post("/uploads/{upload_id}/complete", response_model=UploadObject)
def complete_upload(upload_id: str, body: UploadComplete, request: Request, settings: SettingsDep,
                    storage: StorageDep, project: ProjectDep) -> UploadObject:
    upload, f = svc.complete(settings, storage, project, upload_id, body)
    if f.status == "uploaded":
        request.app.state.file_validator.submit(f.id)
    return svc.to_wire(upload, f)


@router.post("/uploads/{upload_id}/cancel", response_model=UploadObject)
def cancel_upload(upload_id: str, session: SessionDep, storage: StorageDep, project: ProjectDep) -> UploadObject:
    return svc.to_wire(svc.cancel(session, storage, project, upload_id))
