"""The index's description (/info), the probes: /livez (the process is up), /readyz (loaded), and the
service's Prometheus metrics (/metrics, behind the token like /info: metrics.py)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

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


@router.get("/metrics", include_in_schema=False)
async def metrics(service: ServiceDep):
    """The service's metrics in Prometheus' text format (docs/guides/operations.md): requests, search
    stages, encoder passes, writes, the index's counts. Rendered off the event loop (the index's
    gauges read its files' sizes)."""
    body = await asyncio.to_thread(generate_latest, service.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
