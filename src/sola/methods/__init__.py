"""Editing methods behind one small protocol, so the benchmark runner measures them all the same way."""

from .base import EditingMethod, MethodRoute
from .sola import SolaMethod

__all__ = ["EditingMethod", "MethodRoute", "SolaMethod"]
