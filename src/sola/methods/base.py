"""The protocol every editing method implements for `sola bench`."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
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
    """What `sola bench` asks of a method. Optional capabilities are declared, with defaults in `EditorMethod`, so the
    runner never probes for them."""

    name: str
    # True if an input that `routes` reports as not routed computes exactly what `base()` computes, so the bench may
    # read such locality probes from the base run instead of running them again
    unrouted_is_base: bool
    # True if the method keeps its state in snapshots written every few edits (`finish` writes the last): a resumed
    # run continues from the last snapshot, and the rows of edits made after it are measured again
    resumes_from_snapshot: bool

    def edit(self, record: Record) -> dict[str, Any]:
        """Apply one edit; return at least {"id": ..., "seconds": ..., "converged": ...}."""

    def edit_batch(self, records: list[Record]) -> list[dict[str, Any]]:
        """Apply a batch of edits that arrived together, the method's own way; one `edit` result per record, in
        order. A batch of one is `edit`."""

    def edits_made(self) -> int:
        """Edits the method's durable state holds, rolled back ones included (where a resumed run continues)."""

    def edits_after(self, count: int) -> list[dict[str, Any]]:
        """What `edit` returned for the edits the state holds after its first `count` (a run resumed after edits
        whose rows were not written)."""

    def finish(self) -> None:
        """Make the state durable at the end of a run."""

    def calibrate(self, prompts: list[str], rate: float, against: list[str]) -> float | None:
        """Set the routing threshold so at most `rate` of these unrelated prompts are routed; None if not routed."""

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

    def count_tokens(self, text: str) -> int | None:
        """Tokens of a generated answer (None if the method cannot say), for throughput."""

    @property
    def store_path(self) -> Path | None:
        """The directory the method's durable state is in, if any (its size is reported)."""


class EditorMethod:
    """An editor (`sola.Editor` or a snapshot editor) as an `EditingMethod`: everything that only asks
    `self.editor`, and the defaults of the optional capabilities."""

    editor: Any
    resumes_from_snapshot = False
    store_path: Path | None = None

    @property
    def unrouted_is_base(self) -> bool:
        return self.editor.unrouted_is_base

    def edits_made(self) -> int:
        return len(self.editor.edits(include_rolled_back=True))

    def edit_batch(self, records: list[Record]) -> list[dict[str, Any]]:
        return [self.edit(record) for record in records]

    def edits_after(self, count: int) -> list[dict[str, Any]]:
        return [self._info(edit) for edit in self.editor.edits(include_rolled_back=True)[count:]]

    def _info(self, edit) -> dict[str, Any]:
        return {"id": edit.id, "seconds": edit.seconds, "steps": edit.steps, "converged": edit.converged,
                "loss": edit.loss, "reused": False, "supersedes": edit.supersedes}

    def finish(self) -> None:
        pass

    def calibrate(self, prompts, rate, against):
        return self.editor.calibrate_threshold(prompts, rate, against=against)

    def count_tokens(self, text: str) -> int:
        return len(self.editor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def score(self, prompts, targets, batch_size=16):
        return self.editor.score(prompts, targets, batch_size=batch_size)

    def generate(self, prompts, max_new_tokens=16, batch_size=16):
        return self.editor.generate(prompts, max_new_tokens, batch_size=batch_size, stop_at_newline=True)

    def base(self):
        return self.editor.disabled()

    def describe(self) -> dict[str, Any]:
        return {"config": self.editor.config.to_dict(), "model": self.editor.fingerprint, "info": self.editor.info()}
