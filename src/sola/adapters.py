"""Edits as standard PEFT LoRA adapters, the unit every multi-LoRA serving engine loads (vLLM, SGLang, LoRAX).

An edit is one LoRA on the editor's layers, applied to an input only when the router sends that input to it, for the
whole generation: exactly what an engine does with one adapter per request. So an edit exports as a PEFT adapter
directory, and the router (`Editor.route_many`, `sola route`) names, per prompt, the adapter to request:

    DIR/adapter_config.json        peft_type LORA, r, lora_alpha (our scaling = lora_alpha / r), target_modules (the
                                   edited layers' full names), fan_in_fan_out (GPT-2's Conv1D), base_model_name_or_path
    DIR/adapter_model.safetensors  base_model.model.<layer>.lora_A.weight (r, in) and .lora_B.weight (out, r)

`export_all` writes every answering live edit's adapter under DIR/adapters/<edit id>/ and the routing table beside
them (router.safetensors + router.json). An adapter made elsewhere on the same layers and rank imports as an edit
(`import_adapter`): its keys are computed here from the prompts given, so it is routed and rolled back like any edit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .edit import Edit, now
from .errors import InvalidEditError, NotConvergedError, StoreError
from .files import atomic_write
from .loading import EMBEDDED_SOURCE, embedded_model_dir

if TYPE_CHECKING:
    from .parts import EditorCore

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
ROUTER_FORMAT = 1
PEFT_TASK = {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "classification": None}


def _key(layer: str, part: str) -> str:
    return f"base_model.model.{layer}.{part}.weight"


def _base_model_path(editor: EditorCore) -> str:
    """What PEFT (and an engine) loads as the base model: the embedded model's converted directory, or the source."""
    return str(embedded_model_dir()) if editor.source == EMBEDDED_SOURCE else editor.source


def adapter_config(editor: EditorCore) -> dict[str, Any]:
    config = editor.config
    return {
        "peft_type": "LORA", "task_type": PEFT_TASK[editor.task.kind], "r": config.rank,
        "lora_alpha": config.scaling * config.rank, "lora_dropout": 0.0, "bias": "none",
        "target_modules": list(config.layers), "fan_in_fan_out": _fan_in_fan_out(editor),
        "base_model_name_or_path": _base_model_path(editor), "inference_mode": True, "use_rslora": False,
        "use_dora": False, "modules_to_save": None, "init_lora_weights": True,
    }


def _fan_in_fan_out(editor: EditorCore) -> bool:
    """GPT-2's Conv1D stores its weight (in, out): PEFT then needs fan_in_fan_out (the factors' shapes are the same)."""
    return any(type(layer.base_layer).__name__ == "Conv1D" for layer in editor.layers)


def export_adapter(editor: EditorCore, edit_id: str, directory: str | Path) -> Path:
    """Write one live edit's LoRA as a PEFT adapter directory (its stored factors, written as float32)."""
    from .batching import stored_tensors

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"cannot export to {directory}: it is a file; choose a directory")
    if directory.is_dir() and any(p.name not in (CONFIG, WEIGHTS) for p in directory.iterdir()):
        raise StoreError(f"cannot export to {directory}: it holds other files; choose a new or empty directory")
    edit = editor.live_edit(edit_id)
    tensors = stored_tensors(editor, edit.id)
    weights = {}
    for name in editor.config.layers:
        weights[_key(name, "lora_A")] = tensors[f"{name}.lora_A"].float().contiguous()
        weights[_key(name, "lora_B")] = tensors[f"{name}.lora_B"].float().contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / WEIGHTS, lambda t: save_file(weights, str(t), metadata={
        "format": "pt", "sola_edit": edit.id, "prompts": json.dumps(list(edit.prompts)), "target": edit.target,
        "prompt_format": editor.format.kind}))
    atomic_write(directory / CONFIG, lambda t: t.write_text(json.dumps(adapter_config(editor), indent=2) + "\n"))
    return directory


def export_all(editor: EditorCore, directory: str | Path) -> dict[str, Any]:
    """Every answering live edit as DIR/adapters/<id>/, and the routing table: DIR/router.safetensors (`keys` (N, d),
    `adapter` (N,): the index in router.json's `adapters` of the adapter each key row routes to) and DIR/router.json
    (key strategy, distance, thresholds, and every live edit with the adapter that answers for it). -> router.json."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise StoreError(f"cannot export to {directory}: it is not empty; choose a new directory")
    live = editor.edits()
    answering = [e for e in live if e.answering]
    names = [e.id for e in answering]
    position = {name: n for n, name in enumerate(names)}
    for edit in answering:
        export_adapter(editor, edit.id, directory / "adapters" / edit.id)
    keys, owners = [], []
    for edit in live:
        rows = editor.router.keys_of(editor.slots.of(edit.id))
        keys.append(rows.float())
        owners += [position[editor.ledger.answering(edit.id)]] * len(rows)
    table = {"keys": torch.cat(keys) if keys else torch.zeros(0, 0),
             "adapter": torch.tensor(owners, dtype=torch.long)}
    atomic_write(directory / "router.safetensors", lambda t: save_file(table, str(t)))
    config = editor.config
    router = {
        "format_version": ROUTER_FORMAT, "key": config.key, "keys": editor.fingerprint["keys"],
        "distance": config.resolved_distance(), "threshold": config.resolved_threshold(),
        "unnamed_threshold": config.resolved_unnamed_threshold() if config.key == "subject" else None,
        "adapters": names, "base_model_name_or_path": _base_model_path(editor), "rank": config.rank,
        "prompt_format": editor.format.kind,
        "edits": [{"id": e.id, "adapter": editor.ledger.answering(e.id), "prompts": list(e.prompts),
                   "target": e.target, "subject": e.subject} for e in live],
        "note": "route with `sola route` or Editor.route_many (key='subject' also needs the subject index, which "
                "lives in the editor); this table is the key matrix those route by, for inspection",
    }
    atomic_write(directory / "router.json", lambda t: t.write_text(json.dumps(router, indent=1) + "\n"))
    return router


def read_adapter(editor: EditorCore, directory: str | Path) -> dict[str, torch.Tensor]:
    """A PEFT LoRA adapter's factors as "{layer}.lora_A"/"lora_B" of this editor's layers, float32, rescaled to this
    editor's scaling; an error naming what does not fit (not a LoRA adapter, other layers, another rank or shape,
    bias or DoRA terms) otherwise."""
    from .batching import checked_factors

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG, directory / WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise InvalidEditError(f"{directory} is not a PEFT adapter directory ({CONFIG} and {WEIGHTS} expected; "
                               "adapters saved as adapter_model.bin must be re-saved with safe_serialization=True)")
    try:
        config = json.loads(config_path.read_text())
        weights = load_file(str(weights_path))
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as err:
        raise InvalidEditError(f"{directory}: the adapter cannot be read ({err})") from None
    if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("bias", "none") != "none":
        raise InvalidEditError(f"{directory}: only plain LoRA adapters import (peft_type LORA, no DoRA, bias none); "
                               f"this one is {config.get('peft_type')!r}")
    rank = config.get("r")
    if rank != editor.config.rank:
        raise InvalidEditError(f"{directory}: its rank r={rank} differs from this editor's rank {editor.config.rank}; "
                               f"open an editor with EditConfig(rank={rank}) on a new store to import it")
    alpha = config.get("lora_alpha", rank)
    scale = (math.sqrt(rank) if config.get("use_rslora") else rank)
    theirs = alpha / scale
    ratio = theirs / editor.config.scaling  # exactly 1.0 when the scalings agree: B is then unchanged
    tensors = {}
    for name in editor.config.layers:
        A, B = _find(weights, name, "lora_A"), _find(weights, name, "lora_B")
        if A is None or B is None:
            found = sorted({k.rsplit(".lora_", 1)[0].removeprefix("base_model.model.") for k in weights})
            raise InvalidEditError(f"{directory}: it has no LoRA for {name}; it adapts {found[:6]}, this editor's "
                                   f"layers are {editor.config.layers}: import adapters trained on the same layers")
        tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"] = A.float(), B.float() * ratio
    checked_factors(editor, tensors, f"the adapter {directory}")
    return tensors


def _find(weights: dict[str, torch.Tensor], layer: str, part: str) -> torch.Tensor | None:
    """A factor by PEFT's key names (with or without an adapter name: `lora_A.weight` or `lora_A.default.weight`)."""
    for key in (_key(layer, part), f"base_model.model.{layer}.{part}.default.weight"):
        if key in weights:
            return weights[key]
    return None


def import_adapter(editor: EditorCore, directory: str | Path, prompts: str | list[str], target: str,
                   subject: str | None = None) -> Edit:
    """A PEFT LoRA adapter becomes an edit of `prompts` -> `target` (see `Editor.import_peft`)."""
    from .batching import import_edit

    tensors = read_adapter(editor, directory)
    request = editor.planner.check(prompts, target, subject, None, False)
    loss, converged = _measure(editor, request, tensors)
    if not converged and editor.config.on_no_converge == "refuse":  # as `edit` treats a training that fell short
        raise NotConvergedError(f"the adapter {directory} does not reproduce {request.target!r} after its prompts "
                                f"(teacher-forced loss {loss:.3f}); nothing was stored. Check that it was trained for "
                                "these prompts and this model and prompt format, or keep it anyway with "
                                "EditConfig(on_no_converge=\"commit\") (sola edit --keep-unconverged)",
                                committed=[], failed=[])
    edit = Edit(id="imported", prompts=request.prompts, target=request.target, subject=request.subject,
                subject_inferred=request.subject_inferred, created=now(), steps=0, loss=round(loss, 6),
                converged=converged, seconds=0.0,
                note=f"imported from the PEFT adapter {Path(directory).resolve()}")
    return import_edit(editor, edit, tensors)


@torch.no_grad()
def _measure(editor: EditorCore, request, tensors: dict[str, torch.Tensor]) -> tuple[float, bool]:
    """The adapter's loss on its target after its prompts, and whether it reproduces the target exactly (teacher
    forced, the check a trained edit passes), with it applied as the edit being trained is: nothing is stored."""
    batch = editor.task.batch(list(request.encoded), list(request.targets))
    for name, layer in zip(editor.config.layers, editor.layers):
        layer.try_factors(tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"])
    try:
        editor.decision.fix(torch.zeros(len(request.encoded), dtype=torch.long), training=True)
        row_loss, exact = editor.task.score(batch, editor.task.target_forward(batch))
    finally:
        editor.decision.clear()
        for layer in editor.layers:
            layer.end_training()
    return float(row_loss.mean()), bool(exact.all())
