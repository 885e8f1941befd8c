"""The errors the library raises for things a user can fix.

Messages say what is wrong, never which CLI flag or HTTP field to change: the CLI adds its own
hints (`medsearch.cli.hint_for`), the HTTP API its status codes (`medsearch.server.app`):

    BadInputError  400   a query, option or file that cannot be used as given
    NotFoundError  404   a path, model, index or document that does not exist
    MismatchError  409   an index built by another model or another index format
    BackendUnavailableError  503   the index's vector backend cannot be reached (a Qdrant server)
    RerankerUnavailableError 503   the index's re-ranker cannot be loaded (its folder gone, say)
"""

from __future__ import annotations

from pathlib import Path


class MedsearchError(Exception):
    """Something the user can fix: the message says what was wrong and what to do."""


class BadInputError(MedsearchError, ValueError):
    """Input that cannot be used as given (an empty query, an unknown tier, a malformed file)."""


class NotFoundError(MedsearchError):
    """Something named by the user does not exist."""


class MismatchError(MedsearchError):
    """Two things that must belong together do not (an index and a model, an index and this version)."""


class IndexNotFoundError(NotFoundError):
    """No index at `path` (or a folder there that is not one)."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


class DamagedIndexError(MedsearchError):
    """A generation's files differ from the checksums its commit recorded, or its parts disagree
    (`medsearch verify` names every problem)."""


class IndexFormatError(MismatchError):
    """The index at `path` was written in a format this version does not read."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


class ModelMismatchError(MismatchError):
    """The index at `path` holds vectors of another model than `model` (a model spec), or of the same
    model computed by a runtime of another precision (`runtime`: one that matches the index)."""

    def __init__(self, message: str, path: Path, model: str, runtime: str | None = None):
        super().__init__(message)
        self.path = path
        self.model = model
        self.runtime = runtime


class ModelLoadError(NotFoundError):
    """A model could not be loaded; `remote` when it was a hub name (so perhaps only offline)."""

    def __init__(self, message: str, remote: bool):
        super().__init__(message)
        self.remote = remote


class RerankerLoadError(ModelLoadError):
    """A cross-encoder could not be loaded, or what was named is not one."""


class RerankerUnavailableError(MedsearchError):
    """The re-ranker an index records cannot be loaded now: the index's queries that re-rank fail
    (those that do not still run)."""


class MissingExtraError(MedsearchError):
    """An optional part of medsearch is not installed; `extra` names the pip extra that brings it."""

    def __init__(self, message: str, extra: str):
        super().__init__(message)
        self.extra = extra


class DownloadError(MedsearchError):
    """A public source could not be fetched (offline, moved, refused)."""


class NoSpaceError(MedsearchError):
    """The device filled up while a new generation was written: nothing was committed, the index is
    as it was, and the same write succeeds once there is room."""


class BackendUnavailableError(MedsearchError):
    """The vector backend an index names cannot be used now (a Qdrant server down, a local-mode
    folder held by another process, a collection deleted behind medsearch's back)."""


def reason(err: BaseException) -> str:
    """An exception as a short clause for a one-line message: "missing" for a file not found, else
    the first line of its text (200 characters at most), else its type's name."""
    if isinstance(err, FileNotFoundError):
        return "missing"
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
