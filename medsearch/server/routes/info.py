"""The index's description (/info) and the probes: /livez (the process is up), /readyz (loaded)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from medsearch.server.models import ErrorOut
from medsearch.server.responses import error, public_message, public_view
from medsearch.server.service import ServiceDep

router = APIRouter()


@router.get("/livez", tags=["probes"])
async def livez():
    """The process is up (the model may still be loading)."""
    return {"status": "alive"}


@router.get("/readyz", tags=["probes"], responses={503: {"model": ErrorOut}})
async def readyz(service: ServiceDep):
    """Ready once the model and index are loaded and warm: 200, else 503."""
    if service.load_error is not None:
        return error(503, f"cannot serve: {service.load_error}")
    if not service.ready.is_set():
        return error(503, "loading the model and index")
    manifest = service.searcher.index.manifest
    return {"status": "ready", "index": service.searcher.index.path.name, "documents": manifest.documents,
            "model": public_message(manifest.model["name"])}


@router.get("/info", tags=["index"])
async def info(service: ServiceDep):
    """The index's manifest (model, dims, tiers, index types, counts), what derives from it (live
    chunks, the fast tier's stage and candidates), its generation and its files' sizes: the same
    object as `medsearch info --json`, with the service's re-ranker when it was given one."""
    searcher = service.loaded()

    def read() -> dict:
        with searcher.pinned() as index:
            return searcher.describe(index)

    return public_view(await asyncio.get_running_loop().run_in_executor(service.search_pool, read))
