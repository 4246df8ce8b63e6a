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
