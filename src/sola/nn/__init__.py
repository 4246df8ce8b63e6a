"""Modules that go into the edited model."""

from .decision import Decision
from .lora import RoutedLoraLayer

__all__ = ["Decision", "RoutedLoraLayer"]
