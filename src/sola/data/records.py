"""One record type for every benchmark: an edit request plus the probes that test it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Probe:
    """A prompt whose answer must not change (locality), with the dataset's answer if it has one."""

    prompt: str
    answer: str | None = None


@dataclass(frozen=True)
class Record:
    """An edit request from a benchmark.

    `prompt` should be answered with `target` after the edit, and so should each of `rephrases` (never shown to the
    editor). `locality` holds the dataset's own locality probes. `truth` is the answer before the edit, if known.
    `source` says where the record came from ("zsre_mend_eval.json:17"), so a number can be traced to its record.
    """

    id: str
    prompt: str
    target: str
    rephrases: tuple[str, ...] = ()
    locality: tuple[Probe, ...] = ()
    subject: str | None = None
    truth: str | None = None
    source: str = ""

    def request(self) -> dict:
        """What an editor is given: the prompt, the target and the subject. Nothing else."""
        return {"prompt": self.prompt, "target": self.target, "subject": self.subject}


@dataclass(frozen=True)
class Dataset:
    """Records of one benchmark file and what kind of task they are."""

    name: str
    # "qa" (short answers), "completion" (CounterFact), "hallucination" (sentences, perplexity), "classification"
    kind: str
    records: list[Record]
    path: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def head(self, count: int | None) -> Dataset:
        if count is None:
            return self
        return Dataset(self.name, self.kind, self.records[:count], self.path, self.notes)
