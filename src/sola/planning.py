"""What an edit request becomes before training: checked (`EditRequest`), then planned against the live edits
(`EditPlan`: its keys, the edit of the same fact it supersedes, its training rows)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .config import PREFIX_CONTEXTS
from .edit import Edit
from .errors import InvalidEditError
from .prompts import EncodedPrompt, check_text, check_token_limits
from .routing import KeyTable
from .routing.router import Candidate
from .routing.subjects import names_subject, relation_text, shared_name
from .routing.table import cosine_distance

if TYPE_CHECKING:
    from .parts import EditorCore


@dataclass(frozen=True)
class EditRequest:
    """One edit request, checked: nothing about it can fail later except training."""

    prompts: tuple[str, ...]
    encoded: tuple[EncodedPrompt, ...]
    target: str  # stripped of surrounding whitespace (zsRE has " MAT-49"; the answer is "MAT-49")
    targets: tuple[list[int], ...]  # the target's token ids after each prompt, with the end-of-answer token
    subject: str | None
    supersedes: str | None
    new_fact: bool
    aliases: tuple[str, ...] = ()
    subject_inferred: bool = False

    def same_as(self, other: EditRequest) -> bool:
        return (self.prompts, self.target, self.subject) == (other.prompts, other.target, other.subject)


@dataclass(frozen=True)
class EditPlan:
    """A request planned against the committed edits: what to store and what to train."""

    request: EditRequest
    keys: torch.Tensor  # (P, d) routing keys, one per prompt
    older: str | None  # the answering edit of the same fact this edit supersedes
    training: tuple[EncodedPrompt, ...]  # training rows: the prompts, prefixed prompts, the older edits' prompts
    training_targets: tuple[list[int], ...]


@dataclass(frozen=True)
class PlannedEdit:
    """What an edit would do if made now (`Editor.plan`), computed without training: a new fact, or an update of
    the answering edit `supersedes`; the live edit its prompts route to (`nearest`, at `distance`), and why."""

    prompt: str
    target: str
    subject: str | None
    subject_inferred: bool
    supersedes: str | None  # the answering edit it would update; None: a new fact
    nearest: str | None  # the live edit its prompts route to (None: none does)
    distance: float | None
    reason: str

    @property
    def action(self) -> str:
        return f"update of {self.supersedes}" if self.supersedes else "new fact"

    def __str__(self) -> str:
        near = f"; routes to {self.nearest} at {self.distance:.3f}" if self.nearest else ""
        return f"{self.action} ({self.reason}{near})"

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "target": self.target, "subject": self.subject,
                "subject_inferred": self.subject_inferred, "action": self.action, "supersedes": self.supersedes,
                "nearest": self.nearest, "distance": self.distance, "reason": self.reason}


class Planner:
    """Checks and plans edits for one `Editor` (reading its config, task, router, ledger and slots)."""

    def __init__(self, editor: EditorCore) -> None:
        self.editor = editor

    def check(self, prompt, target, subject=None, supersedes=None, new_fact=False, aliases=()) -> EditRequest:
        """Validate one edit request (nothing is computed or changed). With key="subject" and `infer_subject`, an
        edit without a subject takes the name its prompts share (`sola.routing.names.infer_subject`)."""
        editor = self.editor
        prompts, encoded, target, targets = check_texts(editor.encode, editor.task, prompt, target, subject)
        aliases = tuple(check_text(a, "alias").strip() for a in ([aliases] if isinstance(aliases, str) else aliases))
        subject, inferred = self.subject_of(prompts, subject)
        if aliases and not editor.router.keys.needs_subject:
            raise InvalidEditError(f"aliases reach an edit through the subject gate, which key={editor.config.key!r} "
                                   "does not have; use key='subject' (the default) or leave aliases out")
        if aliases and subject is None:
            raise InvalidEditError("aliases are other names of the edit's subject; pass subject= as well (or a prompt "
                                   "that names it, with key='subject')")
        if supersedes is not None and new_fact:
            raise InvalidEditError("pass either supersedes=ID (an update) or new_fact=True, not both")
        return EditRequest(tuple(prompts), tuple(encoded), target, tuple(targets), subject, supersedes, new_fact,
                           aliases, inferred)

    def subject_of(self, prompts: list[str], subject: str | None) -> tuple[str | None, bool]:
        """(the edit's subject, whether it was inferred): a given subject, checked to occur in every prompt (key=
        "subject"); else, with `infer_subject`, the name the first prompt gives if every prompt names it."""
        editor = self.editor
        if not editor.router.keys.needs_subject:
            return subject, False
        if subject is not None:
            for p in prompts:
                if not names_subject(p, subject):
                    raise InvalidEditError(f"the subject {subject!r} does not occur in the prompt {p!r}; key='subject' "
                                           "needs it written in every prompt (as whole words)")
            return subject, False
        guess = shared_name(prompts) if editor.config.infer_subject else None
        return guess, guess is not None

    def plan(self, request: EditRequest) -> EditPlan:
        """Keys, the edit it supersedes (against the committed edits) and its training rows."""
        editor = self.editor
        if request.supersedes is not None:
            editor.ledger.check_supersedable(request.supersedes)
        keys = editor.router.edit_keys(list(request.encoded), request.subject)
        older = request.supersedes if request.supersedes is not None or request.new_fact \
            else self.same_fact(list(request.encoded), keys, request.subject)
        training, targets = list(request.encoded), list(request.targets)
        for context in PREFIX_CONTEXTS[:editor.config.prefix_contexts]:
            for prompt in request.prompts:
                training.append(editor.encode(f"{context} {prompt}"))
                targets.append(editor.task.encode_target(f"{context} {prompt}", request.target))
        if older is not None:  # the wordings of the fact edited before lead here too: teach them the new answer
            earlier = (p for e in editor.ledger.chain(older) for p in e.prompts if p not in request.prompts)
            for text in dict.fromkeys(earlier):
                training.append(editor.encode(text))
                targets.append(editor.task.encode_target(text, request.target))
        return EditPlan(request, keys, older, tuple(training), tuple(targets))

    def preview(self, request: EditRequest) -> PlannedEdit:
        """What `plan` would decide for this request, and why, without training anything."""
        editor = self.editor
        if request.supersedes is not None:
            editor.ledger.check_supersedable(request.supersedes)
        keys = editor.router.edit_keys(list(request.encoded), request.subject)
        decision = self.decide(list(request.encoded), keys, request.subject)
        nearest, distance = (decision.nearest, decision.distance) if decision is not None else (None, None)
        if request.supersedes is not None:
            older, reason = request.supersedes, "supersedes= given"
        elif request.new_fact:
            older, reason = None, "new_fact=True given"
        elif decision is None:
            older, reason = None, "its prompts route to no live edit"
        else:
            older, reason = decision.older, decision.reason
        return PlannedEdit(request.prompts[0], request.target, request.subject, request.subject_inferred, older,
                           nearest, distance, reason)

    def overlaps(self, plan: EditPlan, pending: list[EditPlan]) -> bool:
        """Could `plan` be about the same fact as a pending edit (so it must see that edit committed first)?"""
        config, request = self.editor.config, plan.request
        if request.new_fact or (config.supersede == "never" and request.supersedes is None):
            return False
        if request.subject is not None and any(p.request.subject is not None
                                               and same_subject(request.subject, p.request.subject) for p in pending):
            return True
        table = KeyTable(plan.keys.shape[1], config.resolved_distance())
        for p in pending:
            table.add(p.keys, slot=0)
        return bool((table.nearest(plan.keys)[0] < config.resolved_threshold()).any())

    def same_fact(self, prompts: list[EncodedPrompt], keys: torch.Tensor, subject: str | None) -> str | None:
        """The answering edit a new edit with these prompts and keys updates under `config.supersede`, if any."""
        if self.editor.config.supersede == "never":
            return None
        decision = self.decide(prompts, keys, subject)
        return decision.older if decision is not None else None

    def decide(self, prompts: list[EncodedPrompt], keys: torch.Tensor,
               subject: str | None) -> SupersedeDecision | None:
        """Whether a new edit with these prompts and keys updates a live edit, and why; None if no live edit is near
        enough to ask (its prompts route to none)."""
        editor = self.editor
        config, router = editor.config, editor.router
        if len(router) == 0:
            return None
        if router.keys.needs_subject:
            weighed = router.weigh_texts([p.text for p in prompts])
            candidate = min(weighed, key=Candidate.order)
        else:  # the keys are the prompts' routing queries, each computed alone, as at inference
            found = [router.table.nearest(k.unsqueeze(0)) for k in keys]
            candidate = min((Candidate(float(d[0]), int(s[0])) for d, s in found), key=Candidate.order)
        distance, slot = candidate.distance, candidate.slot
        if slot < 0 or not distance < config.resolved_threshold():
            return None
        found = editor.ledger.get(editor.slots.owner(slot))
        if candidate.rival is not None:
            return SupersedeDecision(None, found.id, distance,
                                     f"another question: nearer to {candidate.rival!r} than to {found.id}")
        answering = editor.slots.owner(int(router.answering(torch.tensor([slot]))[0]))
        if config.supersede == "never":
            return SupersedeDecision(None, found.id, distance, "supersede='never': every edit is a new fact")
        if subject is not None and found.subject is not None:
            if not same_subject(subject, found.subject):
                return SupersedeDecision(None, found.id, distance, "another subject")
            same, why = self._same_question(prompts, keys, subject, found, slot, distance)
        else:
            same = distance < config.resolved_supersede_threshold()
            why = f"{'same' if same else 'another'} question: prompt distance {distance:.3f}"
        return SupersedeDecision(answering if same else None, found.id, distance, why)

    def _same_question(self, prompts: list[EncodedPrompt], keys: torch.Tensor, subject: str, found: Edit, slot: int,
                       distance: float) -> tuple[bool, str]:
        """Whether prompts about `subject` ask what `found` (an edit of the same subject, at key slot `slot`) asks, and
        why. With the relation check: each routes to the other (the new prompts already reached `found`), and the
        question bank does not put them in two relations. Without it: their questions with the subject masked out are
        within `supersede_relation_threshold`. Keys read inside the model have no encoder: only a near-identical
        prompt counts."""
        config, router = self.editor.config, self.editor.router
        if router.relations is not None:
            ours, theirs = router.relations.profile(keys), router.profile(slot)
            if ours.relation is not None and theirs.relation is not None and ours.relation != theirs.relation:
                names = router.relations.bank.names
                return False, (f"another question: relation {names[ours.relation]!r}, not "
                               f"{names[theirs.relation]!r}")
            back = [router.relations.weigh(q, float((1 - keys.float() @ q.float()).min()), ours)
                    for q in router.keys.relation(list(found.prompts), [found.subject] * len(found.prompts))]
            turned = next((v for v in back if v.rival is not None or not v.distance < config.resolved_threshold()),
                          None)
            if turned is not None:
                rival = f"nearer to {turned.rival!r}" if turned.rival else f"distance {turned.distance:.3f}"
                return False, f"another question: its prompt does not route to this one ({rival})"
            return True, f"same question: relation distance {distance:.3f}"
        bound = config.resolved_relation_threshold()
        keys_of = router.keys
        if bound is None or not hasattr(keys_of, "encode"):
            same = distance < config.resolved_supersede_threshold()
            return same, f"{'same' if same else 'another'} question: prompt distance {distance:.3f}"
        ours_text = [relation_text(p.text, subject) for p in prompts]
        theirs_text = [relation_text(p, found.subject) for p in found.prompts]
        vectors = torch.nn.functional.normalize(keys_of.encode(ours_text + theirs_text).float(), dim=-1)
        nearest = float(cosine_distance(vectors[:len(ours_text)], vectors[len(ours_text):]).min())
        same = nearest < bound
        return same, f"{'same' if same else 'another'} question: relation distance {nearest:.3f}"


@dataclass(frozen=True)
class SupersedeDecision:
    """What `supersede="auto"` makes of a new edit near a live one: `older` is the answering edit it updates (None:
    a new fact), `nearest` the live edit its prompts route to, at `distance`; `reason` says why, in words."""

    older: str | None
    nearest: str
    distance: float
    reason: str


def check_texts(encode, task, prompt, target, subject):
    """The checks every method's edit makes before anything is computed: -> (prompts, encoded prompts, the target
    stripped of surrounding whitespace, its token ids after each prompt). `encode` is the editor's prompt encoder."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise InvalidEditError("an edit needs at least one prompt")
    encoded = [encode(check_text(p, "prompt")) for p in prompts]
    target = check_text(target, "target").strip()  # zsRE has targets like " MAT-49"; the answer is "MAT-49"
    if subject is not None:
        check_text(subject, "subject")
    targets = [task.encode_target(p, target) for p in prompts]
    for enc, tgt in zip(encoded, targets):
        task.check_length(enc, tgt)
        check_token_limits(enc, len(tgt) - 1)  # the end-of-answer token is not the user's
    return prompts, encoded, target, targets


def same_subject(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())
