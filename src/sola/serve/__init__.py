"""`sola serve`: edit, ask, explain and undo over HTTP and in a browser (docs/serving.md)."""

from .app import create_app
from .server import open_service, read_or_create_token, serve
from .service import EditService

__all__ = ["EditService", "create_app", "open_service", "read_or_create_token", "serve"]
