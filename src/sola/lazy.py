"""Names a package exports but imports only when first used (so that `sola list` or `sola ask` through a server start
without torch): `__getattr__ = lazy_exports(__name__, {"Editor": "editor", ...})` in the package's `__init__`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `name` from the submodule `where[name]` of `package`, once."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f".{where[name]}", package), name)
        setattr(sys.modules[package], name, value)  # the next lookup finds it without this function
        return value

    return __getattr__
