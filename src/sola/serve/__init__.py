"""`sola serve`: edit, ask, explain and undo over HTTP and in a browser (docs/serving.md).

The names below are imported when first used, so that `sola.serve.discovery` (read by `sola ask`) starts without
FastAPI or torch."""

from ..lazy import lazy_exports

_WHERE = {"create_app": "app", "open_service": "server", "read_or_create_token": "server", "serve": "server",
          "EditService": "service"}

__all__ = sorted(_WHERE)


__getattr__ = lazy_exports(__name__, _WHERE)
