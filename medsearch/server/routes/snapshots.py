"""POST /snapshot: a snapshot of the index's current generation, written into the service's
snapshot folder (`--snapshot-dir`; a `--writable` service, so a token): the same archive as
`medsearch snapshot`, taken while searches and writes go on."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from medsearch.server.access import access_fields
from medsearch.server.models import ErrorOut, SnapshotOut
from medsearch.server.service import ServiceDep

router = APIRouter(tags=["index"])


@router.post("/snapshot", response_model=SnapshotOut, responses={403: {"model": ErrorOut}, 409: {"model": ErrorOut}})
async def take_snapshot(http: Request, service: ServiceDep):
    """Snapshot the current generation into the snapshot folder, under a name of the service's own
    (the index, the generation and the time): restore it with `medsearch restore FILE DIR`. One at a
    time (409 while one runs); 403 on a read-only service or one started without --snapshot-dir."""
    fields = access_fields(http)
    fields["kind"] = "snapshot"
    answer = await service.snapshot()
    fields["generation"] = answer["generation"]
    return JSONResponse(answer)
