"""ELDER's configs: the paper's method (`ElderConfig`) and ours for one-edit-at-a-time streams (`ElderOnlineConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError
from ..snapshot import BaselineConfig, FixedSchedule, check_fixed_schedule
from .deferral import RULES


@dataclass
class ElderConfig(BaselineConfig, FixedSchedule):
    layers: list[str] | None = None
    """The mixture layers. None: six MLP down projections at the paper's depth (LLaMA2-7B: layers 20-25 of 32),
    i.e. layers 19-24 of SmolLM2-135M's 30; for other architectures the SoLA layers."""

    rank: int = 8
    lora_alpha: float = 8.0  # the LoRAs' scale is lora_alpha / rank (the authors' code)
    loras: int = 4  # N per layer
    top_k: int = 2
    epsilon: int = 12  # an input whose nearest code is this far (Hamming) or farther defers to the base model
    threshold_field, threshold_type, threshold_symbol = "epsilon", int, "ε"
    query_layer: str | None = None
    """Where the last-token query is read (its input): None, the module one block before the first mixture layer
    (the authors' code reads it at the layer before the mixture), or the first mixture layer itself if it is in the
    first block."""
    epsilon_rate: float | None = None
    """Set by `calibrate_threshold`: epsilon is re-chosen after every training so that at most this share of the
    calibration questions (held-out, unrelated) reach a stored code; None keeps `epsilon` as given."""
    guide_weight: float = 1e-2  # lambda
    key: str = "last_token"
    """The query vector: "last_token" (the paper: the last prompt token's hidden state at the input of the first
    mixture layer) or a SoLA key computed outside the model ("encoder")."""
    encoder: str | None = None
    guide_replay: bool = False
    """Our addition, off by default (the paper trains on the new edit only): also apply the guided loss to the stored
    queries of the earlier live edits (routers only, no forward pass)."""
    replay_edits: int = 0
    """Our addition, 0 by default: also train on this many earlier live edits (drawn at random, seeded) at every
    step of an edit, or of a batch (`edit_many`), so the shared LoRAs are reminded of them. Without it, one edit at a
    time overwrites the shared LoRAs (measured: after 6 zsRE edits on SmolLM2-135M, the earlier prompts answered the
    6th target)."""
    refresh_codes: bool = False
    """Our addition, off by default (the paper keeps the codes read at the last training iteration): after every
    training, recompute every live edit's codes from its stored queries with the routers as they are now, so the
    codes follow the routers as later edits move them (no forward pass: the queries are read below the mixture).
    Measured for elder-online on zsRE (docs/methods.md): the codes stay current, but after 10 edits more than 1 % of
    held-out NQ questions get an edit's exact code, so the calibrated epsilon is 0 and nothing is edited."""
    deferral: str = "codes"
    """How an input is sent to the base model instead. "codes" (the paper, Algorithm 1): its allocation code must be
    at Hamming distance < `epsilon` from a stored code. "queries" (ours, not the paper's): its query vector must lie
    within `query_radius` (Euclidean) of a stored query of a live edit, the way GRACE's and SoLA's keys are matched;
    the routers still mix the LoRAs as they are, the codes are only kept for the record. Stored queries are read
    below the mixture, so later training does not move them (codes move as the routers train). "subject" (ours):
    SoLA's default routing decides (`SubjectGate`: the input names a live edit's subject and asks the same relation),
    so the mixture is used exactly for the inputs SoLA would edit, and ELDER's routers only choose the LoRAs."""
    query_radius: float | None = None
    """For deferral="queries": None until `calibrate_threshold` sets it (every input defers until then)."""
    gate_threshold: float | None = None
    """For deferral="subject": the subject gate's threshold (None: SoLA's subject-key default, 0.6)."""
    gate_unnamed_threshold: float | None = None
    """For deferral="subject": the gate's threshold for edits without a subject (whole prompts; None: SoLA's
    encoder default until `calibrate_threshold` sets it)."""
    schedule: str = "until_converged"
    """How one edit trains: "until_converged" (Adam at `learning_rate` until the target is reproduced and the top-k
    equals the allocation, at most `max_steps`), or "fixed" (the fixed schedule, as a batch trains). Batches of
    edits (`edit_many`) always train on the fixed schedule."""
    learning_rate: float = 0.02
    max_steps: int = 80

    def validate(self):
        super().validate()
        check_fixed_schedule(self)
        if self.schedule not in ("until_converged", "fixed"):
            raise ConfigError(f"schedule={self.schedule!r} is unknown; choose until_converged or fixed")
        if not 1 <= self.top_k <= self.loras:
            raise ConfigError(f"top_k={self.top_k} must be between 1 and loras={self.loras}")
        if self.rank < 1 or self.epsilon < 0 or self.guide_weight < 0 or not self.lora_alpha > 0:
            raise ConfigError("rank and lora_alpha must be positive, and epsilon and guide_weight non-negative")
        if self.epsilon_rate is not None and not 0 <= self.epsilon_rate < 1:
            raise ConfigError(f"epsilon_rate={self.epsilon_rate} must be in [0, 1)")
        if self.deferral not in RULES:
            raise ConfigError(f"deferral={self.deferral!r} is unknown; choose one of {', '.join(map(repr, RULES))} "
                              "('codes' is the paper's)")
        for name in ("gate_threshold", "gate_unnamed_threshold"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name}={value} must be positive (or None for SoLA's default)")
        if self.query_radius is not None and not self.query_radius > 0:
            raise ConfigError(f"query_radius={self.query_radius} must be positive (or None until calibrated)")
        if self.key not in ("last_token", "encoder"):
            raise ConfigError(f"key={self.key!r}: ELDER routes on 'last_token' (the paper) or 'encoder'")
        return self


@dataclass
class ElderOnlineConfig(ElderConfig):
    """`elder-online`, ours (not the paper's): ELDER for one-edit-at-a-time streams. Each edit trains on the fixed
    schedule (a few steps, the lr decaying) together with `replay_edits` earlier edits drawn at random, and the guided
    loss also pulls every earlier live edit's stored queries toward its own allocation. The mixture is used for the
    inputs SoLA's subject routing sends to an edit (`deferral="subject"`); ELDER's routers choose the LoRAs. Why these
    defaults (the paper's code deferral collapses in a one-at-a-time stream): docs/methods.md, "elder-online"."""

    schedule: str = "fixed"
    deferral: str = "subject"
    replay_edits: int = 8
    guide_replay: bool = True
    fixed_steps: int = 20
    fixed_lr_step: int = 8
