"""The one timestamp format medsearch writes into its records (manifests, snapshot headers, the
model cache's entries, runtime choices): ISO 8601 in UTC to the second, e.g. 2025-01-31T12:00:00Z.
A leaf module (it imports nothing of medsearch), so that every layer may use it."""

from __future__ import annotations

import time

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc_timestamp(seconds: float | None = None) -> str:
    """`seconds` since the epoch (None: now) as FORMAT, in UTC."""
    return time.strftime(FORMAT, time.gmtime(seconds))
