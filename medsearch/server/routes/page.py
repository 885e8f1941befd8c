"""The search page: / (index.html, never cached) and its files under /static/ (public: no data)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = files("medsearch.server") / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page():
    return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})


def static_files() -> StaticFiles:
    """The page's files, for `app.mount("/static", ...)` (a router cannot carry a mount)."""
    return StaticFiles(directory=str(STATIC))
