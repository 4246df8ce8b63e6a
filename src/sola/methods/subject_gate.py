"""SoLA's subject router as a gate for a method that keeps its own modules: which inputs are about an edit at all.

A method whose edits share modules (ELDER's mixture) decides *how* an input is answered; this gate decides *whether*
it is edited, the way SoLA's default routing does (`EditConfig(key="subject")`, sola.routing): an input passes only
if it names the subject of a live edit and asks about the same relation (the encoder's embedding of the clause with
the subject masked within `threshold` of the edit's); an edit made without a subject takes the name its prompts share
(`infer_subject`), else it is reached by the whole prompt. The gate holds no trained state: it is rebuilt from the
edits' prompts and subjects, so a snapshot stores only its thresholds.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import DEFAULT_THRESHOLDS, EditConfig
from ..prompts import EncodedPrompt
from ..routing.router import Router
from ..routing.subjects import names_subject, shared_name
from ..tasks import Task

GATE_THRESHOLD = DEFAULT_THRESHOLDS["subject"]


class SubjectGate:
    def __init__(self, model: nn.Module, task: Task, threshold: float | None = None,
                 unnamed_threshold: float | None = None) -> None:
        self.config = EditConfig(key="subject", threshold=threshold if threshold is not None else GATE_THRESHOLD,
                                 unnamed_threshold=unnamed_threshold)
        self.router = Router(self.config, model, task, decision=None)

    @property
    def threshold(self) -> float:
        return self.config.resolved_threshold()

    @property
    def unnamed_threshold(self) -> float:
        return self.config.resolved_unnamed_threshold()

    def add(self, slot: int, prompts: list[EncodedPrompt], subject: str | None) -> None:
        """An edit of these prompts: its subject if every prompt names it, else the name they share, else none."""
        subject, inferred_from = _subject_of(prompts, subject)
        self.router.add(slot, self.router.edit_keys(list(prompts), subject), subject, inferred_from=inferred_from)

    def add_many(self, edits: list[tuple[int, list[EncodedPrompt], str | None]]) -> None:
        """Many edits (slot, prompts, subject) at once, as `add` takes each (rebuilding the gate on load): the keys of
        every edit with a subject in one encoder call, of every edit without one in another."""
        if not edits:
            return
        resolved = [_subject_of(prompts, subject) for _, prompts, subject in edits]
        named = [(prompt, subject) for (_, prompts, _), (subject, _) in zip(edits, resolved) if subject is not None
                 for prompt in prompts]
        unnamed = [prompt for (_, prompts, _), (subject, _) in zip(edits, resolved) if subject is None
                   for prompt in prompts]
        named_keys = iter(self.router.keys.relation([p.text for p, _ in named], [s for _, s in named])) if named \
            else iter(())
        unnamed_keys = iter(self.router.edit_keys(unnamed, None)) if unnamed else iter(())
        keys = [next(named_keys if subject is not None else unnamed_keys)
                for (_, prompts, _), (subject, _) in zip(edits, resolved) for _ in prompts]
        self.router.add_many([slot for slot, _, _ in edits], torch.stack(keys),
                             torch.tensor([len(prompts) for _, prompts, _ in edits]),
                             [subject for subject, _ in resolved], inferred_from=[i for _, i in resolved])

    def remove(self, slot: int) -> None:
        self.router.remove(slot)

    def nearest(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance, slot) of each text's nearest edit on the gate's scale; slot -1 (distance inf) for none."""
        return self.router.nearest_texts(texts)

    def passes(self, texts: list[str]) -> torch.Tensor:
        """(B,) bool: whether each text is about a live edit (its nearest distance under the threshold)."""
        if not len(self.router):
            return torch.zeros(len(texts), dtype=torch.bool)
        return self.nearest(texts)[0] < self.threshold

    def calibrate(self, prompts: list[EncodedPrompt], rate: float, against: list[EncodedPrompt] | None) -> float:
        """Set the threshold of edits without a subject so that at most `rate` of these unrelated prompts would reach
        the edits of `against` (SoLA's calibration of the subject key); -> that threshold. The subject threshold
        stays: an unrelated prompt names no edited subject."""
        field, value = self.router.calibrated(prompts, rate, against)
        assert field == "unnamed_threshold"
        self.config = self.config.replace(unnamed_threshold=value)
        self.router.config = self.config
        return value


def _subject_of(prompts: list[EncodedPrompt], subject: str | None) -> tuple[str | None, tuple[str, ...]]:
    """The subject an edit is gated on: the one given if every prompt names it, else the name the prompts share,
    else none; and the prompts it was read from, if it was read from them."""
    texts = [p.text for p in prompts]
    if subject is not None and all(names_subject(t, subject) for t in texts):
        return subject, ()
    shared = shared_name(texts)
    return shared, tuple(texts) if shared is not None else ()
