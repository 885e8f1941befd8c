"""One line per request on the logger `medsearch.access`, and the request metrics, from one plain
ASGI middleware (cheap per request).

A line holds: time (ISO 8601, UTC), method, route (the route's template: /documents/{doc_id},
never the raw path with an id or a query string), status, ms; for a search: queries (in the
request), query_chars (each one's length), hits, generation, mode, tier; for a write: kind,
documents, generation. The query text itself only with `log_queries` (`medsearch serve
--log-queries`): medical queries can be personal health information, and a log is kept.

Handlers and the service add their fields with `access_fields(request)`. `serve` writes the lines
to stderr as `key=value` pairs or as JSON objects (`access_log`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone

from starlette.requests import Request
from starlette.routing import Match, Mount, Route

from medsearch.server.metrics import OTHER, Metrics

log = logging.getLogger("medsearch.access")
FIELDS = "medsearch.access"  # the scope key of a request's fields


def access_fields(request: Request) -> dict:
    """The fields of this request's access line, for a handler or the service to add to (a dict
    that nobody reads when the app runs without the middleware)."""
    return request.scope.setdefault(FIELDS, {})


class AccessMiddleware:
    """Outermost: times each HTTP request, counts it in `metrics` by route template, method and
    status, and logs its line (refused ones too: a 401 of the token check, a 413)."""

    def __init__(self, app, routes: list, metrics: Metrics):
        self.app = app
        self.routes = routes  # the app's routes (the same list: routers included later are in it)
        self.metrics = metrics
        self._flat: list | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        fields = scope[FIELDS] = {}
        status = 500  # an exception that escapes the app: the outermost middleware answers 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - started
            route = self._template(scope)
            self.metrics.request(route, scope["method"], status, seconds)
            if log.isEnabledFor(logging.INFO):
                line = {"method": scope["method"], "route": route, "status": status, "ms": round(seconds * 1000, 3),
                        **fields}
                log.info("%s %s %d", scope["method"], route, status, extra={"access": line})

    def _template(self, scope) -> str:
        """The template of the route that served the request (`scope["route"]`, set by the router),
        else of the one whose path matches (a request the guard refused), else OTHER."""
        route = scope.get("route")
        if route is None:
            if self._flat is None:
                self._flat = list(_flatten(self.routes))
            route = next((r for r in self._flat if r.matches(scope)[0] != Match.NONE), None)
        return getattr(route, "path_format", None) or OTHER


def _flatten(routes):
    """Routes, with those of included routers in their place (FastAPI 0.16x keeps an included router
    as one entry that holds the router; earlier versions copied its routes into the app's)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flatten(inner.routes)
        elif isinstance(route, (Route, Mount)):
            yield route


class TextFormatter(logging.Formatter):
    """`time=... method=GET route=/search status=200 ms=12.5 queries=1 query_chars=[42] ...`: numbers
    and lists as JSON; a string as it is when it holds only ASCII letters, digits and `_./{}:@+-` (a
    route, a mode), else as a JSON string with everything but printable ASCII escaped (a query's
    text: no newline, control character or Unicode line separator can start a forged line)."""

    PLAIN = re.compile(r"^[A-Za-z0-9_./{}:@+-]+$")

    def format(self, record: logging.LogRecord) -> str:
        pairs = {"time": _time(record), **getattr(record, "access", {"message": record.getMessage()})}
        return " ".join(f"{key}={self._value(value)}" for key, value in pairs.items())

    def _value(self, value) -> str:
        if isinstance(value, str) and self.PLAIN.match(value):
            return value
        return json.dumps(value, separators=(",", ":"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `{"time": "...", "method": "GET", "route": "/search", ...}`."""

    def format(self, record: logging.LogRecord) -> str:
        pairs = {"time": _time(record), **getattr(record, "access", {"message": record.getMessage()})}
        return json.dumps(pairs, separators=(",", ":"))


def _time(record: logging.LogRecord) -> str:
    """The record's time in ISO 8601, UTC, to the millisecond: 2025-01-31T09:05:02.123Z."""
    return datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@contextmanager
def access_log(log_format: str = "text", log_level: str = "info"):
    """Within the block, `medsearch.access` lines go to stderr in `log_format` (text or json), and
    nowhere else; at a `log_level` above info (warning, error, critical) no line is written. What
    `medsearch serve` runs the server in; the logger is as it was after the block."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    saved = log.handlers[:], log.propagate, log.level
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO if log_level in ("info", "debug") else logging.WARNING)
    try:
        yield
    finally:
        log.handlers[:], log.propagate = saved[0], saved[1]
        log.setLevel(saved[2])
