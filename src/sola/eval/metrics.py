"""Metric functions, each on plain values so they can be checked by hand.

Teacher-forced metrics read `TargetScore`s (the target's tokens and the model's argmax at each); autoregressive ones
read generated text. Aggregates are means over records (each record counts once, whatever its number of probes).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence

from ..data.probes import normalise


def token_accuracy(predicted: Sequence[int], target: Sequence[int]) -> float:
    """Share of target positions whose argmax prediction is the target token (EasyEdit/WISE "Rel"/"Gen")."""
    if not target:
        raise ValueError("token_accuracy needs a non-empty target")
    if len(predicted) != len(target):
        raise ValueError(f"{len(predicted)} predictions for {len(target)} target tokens")
    return sum(p == t for p, t in zip(predicted, target)) / len(target)


def agreement(predicted: Sequence[int], reference: Sequence[int]) -> float:
    """Share of positions where two argmax sequences agree (teacher-forced locality: edited vs. base model)."""
    return token_accuracy(predicted, reference)


def exact_match(answer: str, target: str) -> float:
    """1.0 if the answer equals the target after normalisation (case, punctuation, articles, spaces), else 0.0."""
    return float(normalise(answer) == normalise(target))


def token_f1(answer: str, target: str) -> float:
    """SQuAD-style F1 over normalised words (the SoLA paper's QA metric)."""
    predicted, gold = normalise(answer).split(), normalise(target).split()
    if not predicted or not gold:
        return float(predicted == gold)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def perplexity(nlls: Iterable[float], lengths: Iterable[int] | None = None) -> float:
    """exp of the mean per-token negative log-likelihood; with `lengths`, each nll is a per-token mean over that many
    tokens and the average is token-weighted (corpus perplexity)."""
    nlls = list(nlls)
    if not nlls:
        return float("nan")
    if lengths is None:
        return math.exp(sum(nlls) / len(nlls))
    lengths = list(lengths)
    return math.exp(sum(n * k for n, k in zip(nlls, lengths)) / sum(lengths))


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values that exist (None: no value at all)."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(present) / len(present) if present else None


def quantiles(values: Sequence[float], points: Sequence[float] = (0.01, 0.1, 0.5, 0.9, 0.99)) -> dict[str, float]:
    """Empirical quantiles (nearest rank), keyed "q01", "q50", ..."""
    if not values:
        return {}
    ordered = sorted(values)
    return {f"q{round(p * 100):02d}": ordered[min(len(ordered) - 1, int(p * len(ordered)))] for p in points}


def median_p90(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p90": None}
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]}
