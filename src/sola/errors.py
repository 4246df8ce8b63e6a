"""The exceptions users catch. Every message says what was wrong and how to fix it."""

from __future__ import annotations


class SolaError(Exception):
    """Base class of every error this library raises on purpose."""


class InvalidEditError(SolaError, ValueError):
    """An edit request or a prompt is malformed (empty, too long, wrong type)."""


class UnknownEditError(SolaError, KeyError):
    """An edit id that the editor does not hold."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class ConfigError(SolaError, ValueError):
    """A configuration value that cannot work with this model."""


class ModelNotFoundError(SolaError, OSError):
    """A base model or encoder that cannot be found locally (the model hubs are not reachable)."""


class StoreError(SolaError, OSError):
    """A store directory that cannot be opened or written."""


class CorruptStoreError(StoreError):
    """A store file that is truncated, malformed or does not match its journal."""


class ModelMismatchError(StoreError):
    """A store that was made with a different base model (or key encoder) than the one given."""


class DataError(SolaError, ValueError):
    """A benchmark file is missing or a record in it is malformed (the message names the file, line and field)."""


class StoreExistsError(StoreError):
    """A store was to be created where another process has just created one (open it instead)."""


class StoreBusyError(StoreError):
    """Another process held the store's write lock for longer than this writer was willing to wait."""


class ReadOnlyStoreError(StoreError):
    """A change asked of a store opened read-only (e.g. a damaged store opened with `skip_damaged=True`)."""


class RequestError(InvalidEditError):
    """One request of a batch (`Editor.edit_many`) is malformed (not an object, no prompt or target)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"request {index + 1}: {reason}")
        self.request_index, self.reason = index, reason


def at_request(error: SolaError, index: int) -> SolaError:
    """`error` (about one request of a batch) as the same kind of error, its message prefixed with the request's
    place counted from 1. `request_index` (from 0) and `reason` (the message without the place) let a caller that read
    the requests from a file name the line instead."""
    placed = type(error)(f"request {index + 1}: {error}")
    placed.request_index, placed.reason = index, str(error)
    return placed


class NotConvergedError(SolaError):
    """Training did not reproduce an edit's target within `EditConfig.max_steps` and `on_no_converge="refuse"`: that
    edit was not stored. `committed` holds the edits of the same call that were stored; `failed` holds, for each
    refused request, (its index in the call, the unstored `Edit` with its steps and loss)."""

    def __init__(self, message: str, committed: list, failed: list) -> None:
        super().__init__(message)
        self.committed, self.failed = committed, failed


class EditorClosedError(SolaError, RuntimeError):
    """An editor asked or edited after `close()` took it off its model."""


class InternalError(RuntimeError):
    """A failure nobody meant to raise (a bug, not the caller's input): the server answers it with status 500 and
    reports it in a job's events as "InternalError", with the original exception's type and message."""
