"""Evaluation: metrics, the sequential-editing runner behind `sola bench`, and its reports."""

from .report import compare, load_results
from .runner import run
from .spec import BenchSpec

__all__ = ["BenchSpec", "compare", "load_results", "run"]
