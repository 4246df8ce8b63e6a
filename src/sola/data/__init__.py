"""Benchmark data: where it lives, loaders of the published formats, and the probes built from it."""

from .loaders import DATASETS, load_concepts, load_counterfact, load_dataset, load_hallucination, load_nq, load_scotus
from .location import data_dir
from .records import Dataset, Probe, Record


def load_zsre(data=None) -> Dataset:
    """The zsRE edit split (WISE/EasyEdit eval file) from the data directory or a file."""
    return load_dataset("zsre", data)


__all__ = ["DATASETS", "Dataset", "Probe", "Record", "data_dir", "load_concepts", "load_counterfact", "load_dataset",
           "load_hallucination", "load_nq", "load_scotus", "load_zsre"]
