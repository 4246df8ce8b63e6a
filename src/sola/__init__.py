"""sola: reversible lifelong model editing (SoLA: one frozen LoRA per edit, semantic routing, exact rollback).

The names below are imported when first used, so that what needs no model (`sola list`, `sola info`, reading a
journal) starts without importing torch."""

from importlib import import_module

__version__ = "0.1.0"

_WHERE = {"EditConfig": "config", "Edit": "edit", "Editor": "editor", "Route": "routing",
          **{name: "errors" for name in ("ConfigError", "CorruptStoreError", "DataError", "EditorClosedError",
                                         "InternalError", "InvalidEditError",
                                         "ModelMismatchError", "ModelNotFoundError", "NotConvergedError",
                                         "ReadOnlyStoreError", "SolaError", "StoreBusyError", "StoreError",
                                         "UnknownEditError")}}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'sola' has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
