"""The protocol every editing method implements for `sola bench`."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from ..data import Record
from ..tasks import TargetScore


@dataclass(frozen=True)
class MethodRoute:
    """Where a routed method sends a prompt: the nearest edit (an id the method returned from `edit`), its distance,
    and whether it is under the method's threshold (i.e. the edit is applied)."""

    edit_id: str | None
    distance: float | None
    routed: bool


class EditingMethod(Protocol):
    name: str
    # optional: True if an input that `routes` reports as not routed computes exactly what `base()` computes, so
    # the bench may read such locality probes from the base run instead of running them again
    unrouted_is_base: bool

    def edit(self, record: Record) -> dict[str, Any]:
        """Apply one edit; return at least {"id": ..., "seconds": ..., "converged": ...}."""

    def score(self, prompts: list[str], targets: list[str], batch_size: int) -> list[TargetScore]:
        """Teacher-forced reading of each target after its prompt."""

    def generate(self, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
        """Greedy answers, stopped at end of sequence, a newline or `max_new_tokens`."""

    def base(self) -> AbstractContextManager:
        """Inside, the method computes exactly what the unedited model computes."""

    def routes(self, prompts: list[str]) -> list[MethodRoute] | None:
        """For routed methods, where each prompt goes; None for methods without routing."""

    def describe(self) -> dict[str, Any]:
        """Config, model fingerprint and memory, for the report."""


class EditorMethod:
    """The parts of an `EditingMethod` that only ask `self.editor` (a `sola.Editor` or a baseline editor)."""

    editor: Any

    def score(self, prompts, targets, batch_size=16):
        return self.editor.score(prompts, targets, batch_size=batch_size)

    def generate(self, prompts, max_new_tokens=16, batch_size=16):
        return self.editor.generate(prompts, max_new_tokens, batch_size=batch_size, stop_at_newline=True)

    def base(self):
        return self.editor.disabled()

    def describe(self) -> dict[str, Any]:
        return {"config": self.editor.config.to_dict(), "model": self.editor.fingerprint, "info": self.editor.info()}
