"""Training and committing edits: a batch of plans trained together (each its own LoRA) and committed in order, and
`edit_many`'s loop that checks every request first, then plans, trains and commits one batch at a time under the
store's lock."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from .config import EditConfig
from .edit import Edit, now
from .errors import InvalidEditError, NotConvergedError, UnknownEditError, at_request
from .planning import EditPlan, EditRequest
from .prompts import check_text
from .requests import parse_request
from .training import train_edits

if TYPE_CHECKING:
    from .parts import EditorCore


def train_and_commit(editor: EditorCore, plans: list[EditPlan], started: float,
                     progress=None) -> list[tuple[Edit, bool]]:
    """Train the planned edits together (one slot each, see `train_edits`) and commit them in order; -> each edit and
    whether it was stored (an edit that did not converge is not, under on_no_converge="refuse"). Called with the
    store's lock held, so the ids it trains with are the ids it commits under (the seed follows the id)."""
    config = editor.config
    first = editor.parts.next_number()
    generators = [torch.Generator().manual_seed(zlib.crc32(f"{config.seed}:{first + i}".encode()))
                  for i in range(len(plans))]
    rows = [(k, enc, tgt) for k, plan in enumerate(plans) for enc, tgt in zip(plan.training, plan.training_targets)]
    batch = editor.task.batch([enc for _, enc, _ in rows], [tgt for _, _, tgt in rows])
    results = train_edits(editor.task, editor.decision, editor.layers, batch,
                          torch.tensor([k for k, _, _ in rows], dtype=torch.long), config, generators, progress)
    seconds = round((time.perf_counter() - started) / len(plans), 3)  # a batch's wall time, shared out
    out: list[tuple[Edit, bool]] = []
    for plan, result in zip(plans, results):
        store = result.converged or config.on_no_converge == "commit"
        number = first + sum(1 for _, stored in out if stored)
        request = plan.request
        record = Edit(id=f"e{number}" if store else "", prompts=request.prompts, target=request.target,
                      subject=request.subject, subject_inferred=request.subject_inferred, aliases=request.aliases,
                      created=now(), steps=result.steps, loss=round(result.loss, 6),
                      converged=result.converged, seconds=seconds, supersedes=plan.older)
        out.append((commit(editor, record, plan.keys, result.factors) if store else record, store))
    return out


def commit(editor: EditorCore, record: Edit, keys: torch.Tensor,
           factors: list[tuple[torch.Tensor, torch.Tensor]]) -> Edit:
    """Make an edit durable (if the editor has a store), then install it in every per-edit part and link it to the
    edit it supersedes. Called with the store's lock held."""
    tensors = {"keys": keys.to(torch.float32)}
    for name, (A, B) in zip(editor.config.layers, factors):  # imported factors are rounded here
        tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"] = A.to(editor.kept_dtype), B.to(editor.kept_dtype)
    if editor.store is not None:  # durable first: if this fails, memory is unchanged
        editor.store.commit_edit(record.to_dict(), tensors)
    editor.parts.install(record, tensors["keys"], tensors)
    if record.supersedes is not None:
        editor.parts.link(record.supersedes, record.id)
    return record


def stored_tensors(editor: EditorCore, edit_id: str) -> dict[str, torch.Tensor]:
    """A live edit's tensors as a store holds them (its keys, and its LoRA factors at the stored precision)."""
    slot = editor.slots.of(edit_id)
    factors = editor.residency.read(slot, editor.parts.load)
    tensors = {"keys": editor.router.keys_of(slot)}
    for name in editor.config.layers:
        for part in ("lora_A", "lora_B"):
            tensors[f"{name}.{part}"] = factors[f"{name}.{part}"].to(editor.kept_dtype)
    return tensors


def import_edit(editor: EditorCore, edit: Edit, tensors: dict[str, torch.Tensor]) -> Edit:
    """`Editor.import_edit` (see there)."""
    factors = checked_factors(editor, tensors, f"the imported edit {edit.id}")
    encoded = [editor.encode(check_text(p, "prompt")) for p in edit.prompts]
    subject, inferred = editor.planner.subject_of(list(edit.prompts), edit.subject) if not edit.subject_inferred \
        else (edit.subject, True)
    edit = Edit.from_dict({**edit.to_dict(), "subject": subject, "subject_inferred": inferred})
    keys = editor.router.edit_keys(encoded, edit.subject)
    with editor.writing():
        number = editor.parts.next_number()
        older = editor.planner.same_fact(encoded, keys, edit.subject)
        record = Edit.from_dict({**edit.to_dict(), "id": f"e{number}", "created": now(),
                                 "rolled_back": None, "superseded_by": None, "supersedes": older})
        return commit(editor, record, keys, factors)


def _committed(editor: EditorCore, request: EditRequest) -> Edit | None:
    """The live edit made from this request, if any; for a subject read from the prompt, also one made before
    subjects were read (with none)."""
    found = editor.ledger.committed_as(request.prompts, request.target, request.subject)
    if found is None and request.subject_inferred:
        found = editor.ledger.committed_as(request.prompts, request.target, None)
    return found


def check_requests(editor: EditorCore, requests: Iterable[dict[str, Any]]) -> list[EditRequest]:
    """Every request parsed and checked (texts, token limits, subject named) before anything is trained; a bad one
    raises naming the request counted from 1."""
    checked = []
    for index, raw in enumerate(requests):
        request = parse_request(raw, index)
        try:
            checked.append(editor.planner.check(request["prompt"], request["target"], request["subject"],
                                                request["supersedes"], request["new_fact"], request["aliases"]))
        except (InvalidEditError, UnknownEditError) as error:
            raise at_request(error, index) from None
    return checked


def check_supersedes(editor: EditorCore, checked: list[EditRequest]) -> None:
    """Each request that names the edit it updates names a live edit that answers for its fact."""
    for index, request in enumerate(checked):
        if request.supersedes is not None:
            try:
                editor.ledger.check_supersedable(request.supersedes)
            except (InvalidEditError, UnknownEditError) as error:
                raise at_request(error, index) from None


def checked_factors(editor: EditorCore, tensors: dict[str, torch.Tensor],
                    what: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (A, B) factors per edited layer from tensors named "{layer}.lora_A"/"lora_B", each of this editor's shape;
    `what` names their source in the error otherwise."""
    factors = []
    for name, layer in zip(editor.config.layers, editor.layers):
        A, B = tensors.get(f"{name}.lora_A"), tensors.get(f"{name}.lora_B")
        if A is None or B is None or tuple(A.shape) != tuple(layer.lora_A.shape[1:]) \
                or tuple(B.shape) != tuple(layer.lora_B.shape[1:]):
            raise InvalidEditError(f"{what} has no LoRA of the right shape for {name} (this model needs "
                                   f"{tuple(layer.lora_A.shape[1:])}, {tuple(layer.lora_B.shape[1:])}); import only "
                                   "edits made on the same model with the same layers and rank")
        factors.append((A, B))
    return factors


def edit_many(editor: EditorCore, requests: Iterable[dict[str, Any]], progress: bool, batch_size: int,
              skip_committed: bool, on_result: Callable[[int, Edit, str], None] | None) -> list[Edit]:
    """`Editor.edit_many` (see there)."""
    checked = check_requests(editor, requests)
    with editor.writing():  # what other processes committed counts for `supersedes` too
        check_supersedes(editor, checked)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(checked), unit="edit", desc="editing")
    results: list[Edit | None] = [None] * len(checked)
    refused: list[tuple[int, Edit]] = []

    def settle(index: int, edit: Edit, status: str) -> None:
        results[index] = edit
        if status == "refused":
            refused.append((index, edit))
        if on_result is not None:
            on_result(index, edit, status)
        if bar is not None:
            bar.update(1)

    try:
        index = 0
        while index < len(checked):
            with editor.writing():
                started, pending = time.perf_counter(), []
                while index < len(checked) and len(pending) < max(1, batch_size):
                    request = checked[index]
                    done = _committed(editor, request) if skip_committed else None
                    if done is not None:
                        settle(index, done, "skipped")
                        index += 1
                        continue
                    try:
                        plan = editor.planner.plan(request)
                    except (InvalidEditError, UnknownEditError) as error:
                        raise at_request(error, index) from None
                    if pending and (editor.planner.overlaps(plan, [p for _, p in pending])
                                    or (skip_committed and any(request.same_as(p.request) for _, p in pending))):
                        break  # it must see the pending ones committed first
                    pending.append((index, plan))
                    index += 1
                if pending:
                    made = train_and_commit(editor, [p for _, p in pending], started)
                    for (at, _), (edit, stored) in zip(pending, made):
                        settle(at, edit, "committed" if stored else "refused")
    finally:
        if bar is not None:
            bar.close()
    if refused:
        committed = [e for n, e in enumerate(results) if e is not None and n not in dict(refused)]
        raise NotConvergedError(not_converged([e for _, e in refused], editor.config, [n for n, _ in refused]),
                                committed=committed, failed=refused)
    return results


def not_converged(edits: list[Edit], config: EditConfig, indices: list[int] | None = None) -> str:
    """The message of a `NotConvergedError` for these unstored edits (their places in the call, if several)."""
    shown = "; ".join(f"{f'request {i + 1}: ' if indices else ''}{e.prompt!r} -> {e.target!r} (loss {e.loss:.3f} "
                      f"after {e.steps} steps)" for i, e in zip(indices or [0] * len(edits), edits[:5]))
    more = f"; and {len(edits) - 5} more" if len(edits) > 5 else ""
    plural = len(edits) > 1
    return (f"{len(edits)} edit{'s' if plural else ''} did not converge and {'were' if plural else 'was'}"
            f" not stored: {shown}{more}. Training stopped at max_steps={config.max_steps} before the model reproduced"
            f" the target with a loss under {config.loss_bound}. Allow more steps (EditConfig(max_steps=...), `sola "
            "edit --max-steps N`), shorten the target, or store it anyway (EditConfig(on_no_converge='commit'), "
            "`--keep-unconverged`)")
