"""sola: reversible lifelong model editing (SoLA: one frozen LoRA per edit, semantic routing, exact rollback)."""

from .config import EditConfig
from .edit import Edit
from .editor import Editor
from .errors import (ConfigError, CorruptStoreError, DataError, InvalidEditError, ModelMismatchError,
                     ModelNotFoundError, SolaError, StoreError, UnknownEditError)
from .routing import Route

__version__ = "0.1.0"

__all__ = ["ConfigError", "CorruptStoreError", "DataError", "Edit", "EditConfig", "Editor", "InvalidEditError",
           "ModelMismatchError", "ModelNotFoundError", "Route", "SolaError", "StoreError", "UnknownEditError"]
