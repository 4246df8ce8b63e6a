"""The method a spec names, built (or, in a resumed run, reopened from the run's store) behind the method protocol:
the method's registration (`sola.methods.registry`) says how."""

from __future__ import annotations

from pathlib import Path

from .spec import BenchSpec


def build_method(spec: BenchSpec, store_path: Path):
    from ..methods.registry import method

    return method(spec.method).build(spec, store_path)
