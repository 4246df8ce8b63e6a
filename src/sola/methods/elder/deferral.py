"""ELDER's deferral rules: which inputs use the mixture of shared LoRAs, and which run the base model bit for bit.

`ElderConfig.deferral` names one rule; the editor holds one rule object and asks it every deferral question, so each
rule is written in one place:

- `within`: whether each input of a batch uses the mixture (`admits` answers first, from the prompts' text, for a
  rule that reads no query);
- `locate`: the live edit nearest a prompt, its distance and whether it is within the threshold;
- `calibrate` / `recalibrate`: how the threshold follows held-out unrelated questions (re-chosen after every
  training where the stored vectors move);
- `report`: how the calibration questions' nearest distances lie; `threshold`, `describe`, `label`: for the record.

Rules: `CodeDeferral` ("codes", the paper's Algorithm 1), `QueryDeferral` ("queries", ours) and `SubjectDeferral`
("subject", ours: SoLA's subject routing as a gate).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..subject_gate import GATE_THRESHOLD, SubjectGate

if TYPE_CHECKING:
    from .editor import ElderEditor

PAPER_EPSILON = 12


class CodeDeferral:
    """The paper's (Algorithm 1, line 8): an input uses the mixture only if its allocation code is at Hamming
    distance < `epsilon` from a stored code of a live edit (at exactly epsilon it defers). Calibrated, epsilon is
    re-chosen after every training, as the codes move with the routers."""

    name = "codes"

    def __init__(self, editor: ElderEditor) -> None:
        self.editor = editor

    @classmethod
    def label(cls, method: str, config: dict[str, Any], threshold) -> str | None:
        """How a bench run with this rule is named (None: the method's default naming, by its threshold)."""
        return None

    @property
    def threshold(self):
        return self.editor.config.epsilon

    # -- deciding ----------------------------------------------------------------------------------------------------
    def admits(self, texts: list[str]) -> torch.Tensor | None:
        """Whether each prompt may use the mixture, decided from its text before the forward pass; None: decided
        from its query (`within`)."""
        return None

    def distances(self, queries: torch.Tensor | None, top: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, list[str]]:
        """(B, C) Hamming distances of each input's code (from `top` if the caller has routed already, else from
        `queries`) to every stored code of the live edits, and the edit of each code."""
        editor = self.editor
        if top is None:
            top = editor.mixture_weights(queries, False)[1]
        ids = [edit_id for edit_id, codes in editor.codes.items() for _ in range(len(codes))]
        if not ids:
            return torch.zeros(top.shape[0], 0, dtype=torch.int32), ids
        return hamming_distances(editor.code_of(top), torch.cat(list(editor.codes.values()))), ids

    def reaches(self, nearest: torch.Tensor) -> torch.Tensor:
        """Whether a nearest distance uses the mixture."""
        return nearest < self.editor.config.epsilon

    def within(self, top: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) bool: whether each input (its top-k `top`, and its query) uses the mixture."""
        distances, ids = self.distances(queries, top)
        if not ids:
            return torch.zeros(distances.shape[0], dtype=torch.bool)
        return self.reaches(distances.min(1).values)

    def locate(self, prompt) -> tuple[str | None, float | None, bool]:
        editor = self.editor
        distances, ids = self.distances(editor.query_of(prompt).unsqueeze(0))
        best = int(distances[0].argmin())
        distance = distances[0, best]
        return ids[best], float(distance), bool(self.reaches(distance))

    # -- calibrating -------------------------------------------------------------------------------------------------
    def calibrate(self, prompts: list, rate: float, against: list | None):
        """Make the threshold follow these unrelated (encoded) prompts: at most `rate` of them may reach the
        mixture, re-chosen after every training. -> the threshold for what is stored now."""
        editor = self.editor
        editor.calibration = editor.queries_of(prompts)
        editor.config = editor.config.replace(epsilon_rate=rate)
        self.recalibrate()
        return self.threshold

    def recalibrate(self) -> None:
        """Choose the threshold again for the vectors stored now (after a training)."""
        editor = self.editor
        if editor.config.epsilon_rate is None or not editor.codes or not len(editor.calibration):
            return
        self._choose(self.distances(editor.calibration)[0])

    def _choose(self, distances: torch.Tensor) -> None:
        """epsilon = the distance of the first calibration question that must stay out (they use the mixture only
        below it)."""
        self.editor.config = self.editor.config.replace(epsilon=int(self._first_kept_out(distances)))

    def _first_kept_out(self, distances: torch.Tensor) -> float:
        """The nearest distance of the first calibration question (distances: questions x stored) that must stay
        out for at most `epsilon_rate` of them to reach the mixture."""
        nearest = distances.min(1).values.sort().values
        return float(nearest[int(self.editor.config.epsilon_rate * len(nearest))])

    def report(self, queries: torch.Tensor) -> dict[str, Any]:
        """How these queries' nearest codes lie: the distances' histogram and the share that uses the mixture under
        the current epsilon and under the paper's (12)."""
        if not self.editor.codes or not len(queries):
            return {}
        nearest = self.distances(queries)[0].min(1).values
        return {"histogram": {int(d): int((nearest == d).sum()) for d in nearest.unique()},
                "reached": float((nearest < self.editor.config.epsilon).float().mean()),
                "reached_at_paper_epsilon": float((nearest < PAPER_EPSILON).float().mean())}

    # -- the edits ---------------------------------------------------------------------------------------------------
    def add(self, edit_id: str, prompts: list, subject: str | None) -> None:
        """A live edit was made (its codes and queries are the editor's)."""

    def restore(self, edits: list) -> None:
        """The live edits of a snapshot just loaded (their codes and queries are the editor's)."""

    def remove(self, edit_id: str) -> None:
        """A live edit was rolled back."""

    def describe(self) -> dict[str, Any]:
        return {}


class QueryDeferral(CodeDeferral):
    """Ours, not the paper's: an input uses the mixture only if its query vector lies within `query_radius`
    (Euclidean) of a stored query of a live edit, the way GRACE's and SoLA's keys are matched; the routers still mix
    the LoRAs as they are. Until the radius is calibrated, every input defers."""

    name = "queries"

    @classmethod
    def label(cls, method, config, threshold):
        radius = f" {threshold:.3g}" if isinstance(threshold, (int, float)) else ""
        return f"{method} (query radius{radius})"

    @property
    def threshold(self):
        return self.editor.config.query_radius

    def distances(self, queries, top=None):
        """(B, Q) Euclidean distances of each query to every stored query of the live edits, and the edit of each."""
        editor = self.editor
        ids = [edit_id for edit_id in editor.codes for _ in range(len(editor.queries[edit_id]))]
        if not ids:
            return torch.zeros(queries.shape[0], 0), ids
        return torch.cdist(queries.float(), torch.cat([editor.queries[e] for e in editor.codes]).float()), ids

    def reaches(self, nearest):
        radius = self.editor.config.query_radius
        if radius is None:
            return torch.zeros(nearest.shape, dtype=torch.bool)
        return nearest < radius

    def calibrate(self, prompts, rate, against):
        editor = self.editor
        super().calibrate(prompts, rate, against)
        if not editor.codes and against is not None:
            # nothing stored yet: a first radius against the prompts about to be edited (re-chosen after each training)
            self._choose(torch.cdist(editor.calibration.float(), editor.queries_of(against).float()))
        return self.threshold

    def _choose(self, distances):
        """The radius: a hair (0.1 %) below the first question that must stay out, so that it stays out however its
        query is batched (batched and single reads differ in the last digits); positive, as a radius must be."""
        self.editor.config = self.editor.config.replace(
            query_radius=max(self._first_kept_out(distances) * (1 - 1e-3), 1e-6))

    def report(self, queries):
        if not self.editor.codes or not len(queries):
            return {}
        return {"reached": float(self.reaches(self.distances(queries)[0].min(1).values).float().mean())}


class SubjectDeferral(CodeDeferral):
    """Ours: SoLA's subject routing decides (`SubjectGate`: the input names a live edit's subject and asks the same
    relation), from the prompts' text before the forward pass, so the mixture is used exactly for the inputs SoLA
    would edit; ELDER's routers only choose the LoRAs. The gate holds no trained state: it is rebuilt from the live
    edits on load."""

    name = "subject"

    def __init__(self, editor: ElderEditor):
        super().__init__(editor)
        config = editor.config
        self.gate = SubjectGate(editor.model, editor.task, config.gate_threshold, config.gate_unnamed_threshold)

    @classmethod
    def label(cls, method, config, threshold):
        return f"{method} (subject gate {config.get('gate_threshold') or GATE_THRESHOLD:.3g})"

    @property
    def threshold(self):
        return self.gate.threshold

    def admits(self, texts):
        return self.gate.passes(texts)

    def within(self, top, queries=None):
        gate = self.editor.state.gate  # decided from the prompts' text before the forward pass (`admits`)
        return gate if gate is not None else torch.zeros(top.shape[0], dtype=torch.bool)

    def locate(self, prompt):
        distance, slot = self.gate.nearest([prompt.text])
        if int(slot[0]) < 0:
            return None, None, False
        return f"e{int(slot[0])}", float(distance[0]), bool(distance[0] < self.gate.threshold)

    def calibrate(self, prompts, rate, against):
        """SoLA's calibration of the subject key: the threshold of edits without a subject (whole prompts); the
        subject threshold stays."""
        unnamed = self.gate.calibrate(prompts, rate, against)
        self.editor.config = self.editor.config.replace(gate_unnamed_threshold=unnamed)
        return self.gate.threshold

    def recalibrate(self):
        """Nothing moves: the gate's keys are the prompts', not trained."""

    def report(self, queries):
        return {}  # the gate reads text, not queries

    def add(self, edit_id, prompts, subject):
        self.gate.add(_slot(edit_id), prompts, subject)

    def restore(self, edits):
        """The gate holds no trained state: it is rebuilt from the live edits' prompts and subjects."""
        self.gate.add_many([(_slot(edit.id), [self.editor.encode(p) for p in edit.prompts], edit.subject)
                            for edit in edits])

    def remove(self, edit_id):
        self.gate.remove(_slot(edit_id))

    def describe(self):
        return {"gate_threshold": self.gate.threshold, "gate_unnamed_threshold": self.gate.unnamed_threshold}


RULES = {rule.name: rule for rule in (CodeDeferral, QueryDeferral, SubjectDeferral)}

_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int16)


def pack_codes(top: torch.Tensor, loras: int) -> torch.Tensor:
    """Top-k choices (B, L, k) -> packed allocation codes (B, bytes): bit l*N + j set when LoRA j of layer l is
    selected (N = `loras`)."""
    bits = torch.zeros(top.shape[0], top.shape[1], loras, dtype=torch.bool)
    bits.scatter_(-1, top, True)
    flat = bits.view(top.shape[0], -1)
    pad = (-flat.shape[1]) % 8
    flat = torch.cat([flat, flat.new_zeros(flat.shape[0], pad)], 1).view(flat.shape[0], -1, 8)
    return (flat.to(torch.uint8) << torch.arange(8, dtype=torch.uint8)).sum(-1).to(torch.uint8)


def hamming_distances(codes: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """Packed codes (B, bytes) and (E, bytes) -> Hamming distances (B, E): XOR, then a popcount table."""
    return _POPCOUNT[torch.bitwise_xor(codes[:, None, :], stored[None]).long()].sum(-1).to(torch.int32)


def _slot(edit_id: str) -> int:
    """The gate's slot of an edit: its number ("e12" -> 12)."""
    return int(edit_id[1:])
