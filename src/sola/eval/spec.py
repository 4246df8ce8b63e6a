"""What `sola bench` runs: the spec written to a run's spec.json and results.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BenchSpec:
    """What `sola bench` runs. Every field is written to results.json."""

    method: str = "sola"
    dataset: str = "zsre"
    edits: int = 1000
    data: str | None = None  # a data directory or a file of the dataset's format
    model: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    key: str | None = None  # None: the method's default
    layers: list[str] | None = None
    threshold: float | str | None = None  # a number, "calibrate" (1 % of held-out NQ questions), or None (default)
    checkpoints: list[int] = field(default_factory=lambda: [10, 100])
    seed: int = 0
    batch_size: int = 16  # evaluation batch size (`--eval-batch-size`)
    # the protocol (`--batch-size`): edits arrive this many at a time and each method trains a batch its own way;
    # 1 is the sequential protocol (one edit, then the next)
    edit_batch_size: int = 1
    max_new_tokens: int = 16
    subject_probes: int = 1  # same-subject other-relation probes per record
    locality: bool = True  # False: no locality probes at all (a run that measures only the edits)
    reuse_adapters: str | None = None  # a previous run's directory whose trained LoRAs are imported, not retrained
    # False: a locality probe that no edit is routed to is read from the base run instead of being run again, for
    # methods whose unrouted inputs compute exactly the base model (SoLA; `EditingMethod.unrouted_is_base`)
    full_locality: bool = False
    prompt_format: str = "raw"
    withhold_subject: bool = False  # True: edits are made without the records' subjects (the editor infers them)
    config: dict[str, Any] = field(default_factory=dict)  # further EditConfig fields (e.g. {"rank": 8})
