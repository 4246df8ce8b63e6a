"""`sola serve`: edit, ask, explain and undo over HTTP and in a browser (docs/serving.md).

The names below are imported when first used, so that `sola.serve.discovery` (read by `sola ask`) starts without
FastAPI or torch."""

from importlib import import_module

_WHERE = {"create_app": "app", "open_service": "server", "read_or_create_token": "server", "serve": "server",
          "EditService": "service"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'sola.serve' has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
