"""sola: reversible lifelong model editing (SoLA: one frozen LoRA per edit, semantic routing, exact rollback).

The names below are imported when first used, so that what needs no model (`sola list`, `sola info`, reading a
journal) starts without importing torch."""

from .lazy import lazy_exports

__version__ = "0.1.0"

_WHERE = {"EditConfig": "config", "Edit": "edit", "Editor": "editor", "Route": "routing",
          **{name: "errors" for name in ("ConfigError", "CorruptStoreError", "DataError", "EditorClosedError",
                                         "InternalError", "InvalidEditError",
                                         "ModelMismatchError", "ModelNotFoundError", "NotConvergedError",
                                         "ReadOnlyStoreError", "SolaError", "StoreBusyError", "StoreError",
                                         "UnknownEditError")}}

__all__ = sorted(_WHERE)


__getattr__ = lazy_exports(__name__, _WHERE)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
