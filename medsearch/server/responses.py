"""One JSON shape for every answer that is not a result: `{"error": "..."}`, with what a client
may see (no absolute paths, no process ids, text that encodes); and JSON as Starlette renders it."""

from __future__ import annotations

import json
import re

from fastapi.responses import JSONResponse

# An absolute path in a message (index folders, model folders, files): only its last part is shown
_ABSOLUTE_PATH = re.compile(r"""(?<![\w.:/])/(?:[^\s/'"]+/)+([^\s/'";,)]+)""")


def public_message(message: str) -> str:
    """A message fit for any client: absolute paths cut to their last part, no process ids, and
    text that can be encoded (a lone surrogate echoed from a request is escaped)."""
    message = _ABSOLUTE_PATH.sub(r"\1", message)
    message = re.sub(r"\bpid \d+", "another process", message)
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def public_view(value):
    """A JSON value with `public_message` applied to every string (the /info view of a manifest)."""
    if isinstance(value, str):
        return public_message(value)
    if isinstance(value, dict):
        return {key: public_view(item) for key, item in value.items()}
    if isinstance(value, list):
        return [public_view(item) for item in value]
    return value


def json_bytes(value) -> bytes:
    """A JSON answer as Starlette's JSONResponse renders it."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": public_message(message)}, status_code=status, headers=headers)
