"""SoLA through the public `Editor` API."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import STORED_DEFAULTS, EditConfig
from ..data import Record
from ..editor import Editor
from ..errors import ConfigError
from ..store import Store
from .base import EditorMethod, MethodRoute
from .registry import Method, TinySettings, register_method

if TYPE_CHECKING:
    from ..eval.spec import BenchSpec


class SolaMethod(EditorMethod):
    """`Editor` as an `EditingMethod`. With `reuse` (a store made on the same model, layers, rank and training
    settings, with the same edits in the same order), each edit's LoRA is imported instead of trained again: the
    result is the editor editing would build (see `Editor.import_edit`), so key strategies can be compared without
    paying for training once per strategy. Edit times are then the ones measured when the adapters were trained."""

    name = "sola"

    @classmethod
    def bench_label(cls, config: dict[str, Any], threshold) -> str:
        """How a run is named in result tables: its key strategy and threshold (`sola.eval.study`); subject-key runs
        made with the name rules (`sola.routing.names`, which came with `infer_subject`) say "names"."""
        update = ", updates supersede" if config.get("supersede") == "auto" else ""
        names = " + names" if _names(config) else ""
        masks = " + shared-word masks" if _masks(config) else ""
        masks += " + question bank" if _bank(config) else ""
        prefixes = f", {config['prefix_contexts']} prefix contexts" if config.get("prefix_contexts") else ""
        return f"sola {config['key']}{names}{masks} (thr {threshold:.3f}{update}{prefixes})"

    @classmethod
    def bench_name_parts(cls, config: dict[str, Any]) -> list[str]:
        return [config["key"], *(["names"] if _names(config) else []), *(["masks"] if _masks(config) else []),
                *(["bank"] if _bank(config) else []),
                *(["supersede"] if config.get("supersede") == "auto" else []),
                *([f"prefix{config['prefix_contexts']}"] if config.get("prefix_contexts") else [])]

    @classmethod
    def from_spec(cls, spec: BenchSpec, store_path: Path, method: Method | None = None) -> SolaMethod:
        """The editor a bench spec asks for, in the run's store (reopened when resuming)."""
        # every record a new fact, as the papers evaluate; {"supersede": "auto"} in spec.config reads updates as
        # updates. Every edit of the stream is stored, converged or not: a failed edit counts against the method.
        config = EditConfig(prompt_format=spec.prompt_format, seed=spec.seed, supersede="never",
                            on_no_converge="commit")
        if spec.key:
            config = config.replace(key=spec.key)
        if spec.layers:
            config = config.replace(layers=list(spec.layers))
        if isinstance(spec.threshold, (int, float)):
            config = config.replace(threshold=float(spec.threshold))
        if spec.config:
            config = EditConfig.from_dict({**config.to_dict(), **spec.config})
        resuming = Store.exists(store_path)
        editor = Editor.from_pretrained(spec.model, config=None if resuming else config, store=store_path)
        reuse = Store.open(Path(spec.reuse_adapters) / "store") if spec.reuse_adapters else None
        if reuse is not None:
            _check_reusable(reuse.manifest, editor)
        return cls(editor, reuse=reuse)

    def __init__(self, editor: Editor, reuse: Store | None = None) -> None:
        self.editor = editor
        self._reuse = None
        if reuse is not None:
            self._reuse = _edits_of(reuse)
            self._reuse_store = reuse

    def edit(self, record: Record) -> dict[str, Any]:
        if self._reuse is None:
            edit = self.editor.edit(record.prompt, record.target, subject=record.subject)
        else:
            number = len(self.editor.edits(include_rolled_back=True))
            if number >= len(self._reuse):
                raise ValueError(f"--reuse-adapters {self._reuse_store.path} holds only {len(self._reuse)} edits")
            source = self._reuse[number]
            if source.prompts != (record.prompt,) or source.target != record.target:
                raise ValueError(f"--reuse-adapters {self._reuse_store.path}: its edit {source.id} is "
                                 f"{source.prompt!r} -> {source.target!r}, but record {record.id} is {record.prompt!r} "
                                 f"-> {record.target!r}; reuse a run over the same records in the same order")
            # the subject is this record's (None when the bench withholds it: the editor infers one, as edit does)
            source = dataclasses.replace(source, subject=record.subject, subject_inferred=False)
            edit = self.editor.import_edit(source, self._reuse_store.read_tensors(source.id))
        return self._info(edit)

    def edit_batch(self, records: list[Record]) -> list[dict[str, Any]]:
        """Every edit its own LoRA, trained together (`Editor.edit_many`, in its own training batches): the same
        LoRAs as one by one, up to rounding. Reused adapters are imported one by one."""
        if self._reuse is not None or len(records) == 1:
            return [self.edit(record) for record in records]
        requests = [{"prompt": r.prompt, "target": r.target, "subject": r.subject} for r in records]
        return [self._info(edit) for edit in self.editor.edit_many(requests)]

    def _info(self, edit) -> dict[str, Any]:  # an imported edit's time is the one measured when it was trained
        return {**super()._info(edit), "reused": self._reuse is not None}

    @property
    def store_path(self) -> Path | None:
        return self.editor.store.path if self.editor.store is not None else None

    def routes(self, prompts: list[str]) -> list[MethodRoute]:
        threshold = self.editor.config.resolved_threshold()
        found = []
        for prompt in prompts:
            nearest = self.editor.nearest(prompt)
            if nearest is None:
                found.append(MethodRoute(None, None, False))
            else:
                found.append(MethodRoute(nearest.edit_id, nearest.distance,
                                         nearest.rival is None and nearest.distance < threshold))
        return found


def _names(config: dict[str, Any]) -> bool:
    """A subject-key run whose router reads names: made since `infer_subject` existed (runs before it matched the
    subject's words exactly)."""
    return config.get("key") == "subject" and "infer_subject" in config


def _bank(config: dict[str, Any]) -> bool:
    """A subject-key run with the relation check of the question bank (`sola.routing.relations`, 2026-12-06)."""
    return config.get("key") == "subject" and config.get("relation_check") == "bank"


def _masks(config: dict[str, Any]) -> bool:
    """A names run made since `mask_shared_words` existed and with it on (it changes only edits whose subject was
    inferred, but names the code the run measured: the runs before it are kept beside it)."""
    return _names(config) and bool(config.get("mask_shared_words"))


def _edits_of(store: Store):
    from ..edit import Edit

    records = store.journal()
    return [Edit.from_dict(r) for r in records if r["op"] == "edit"]


_TRAINING_FIELDS = ("layers", "rank", "lora_alpha", "prompt_format", "optimizer", "learning_rate", "max_steps",
                    "loss_bound", "factor_dtype", "seed")


def _check_reusable(manifest: dict, editor: Editor) -> None:
    theirs, ours = {**STORED_DEFAULTS, **manifest["config"]}, editor.config.to_dict()
    differing = [f for f in _TRAINING_FIELDS if theirs.get(f) != ours.get(f)]
    if ours.get("supersede") == "auto":
        differing.append("supersede=auto here: an update also trains on the wordings of the edit it replaces")
    for part in ("config_hash", "weights_hash"):
        if manifest["model"].get(part) != editor.fingerprint.get(part):
            differing.append(f"model {part}")
    if differing:
        raise ConfigError(f"--reuse-adapters: that run trained its LoRAs differently ({', '.join(differing)}); only "
                          "the key strategy and threshold may differ")


register_method(Method(
    name="sola", editor=Editor, config=EditConfig, bench=SolaMethod.from_spec, naming=SolaMethod,
    summary="SoLA: one frozen LoRA per edit, routed once from the prompt; exact rollback (this library's method)",
    tiny=TinySettings(families=("llama", "gpt2", "t5", "bert"),
                      config=dict(key="mean_pool", prompt_format="raw", learning_rate=0.05, max_steps=200,
                                  threshold=1e-3),
                      family_config={"t5": dict(rank=8, learning_rate=0.02, max_steps=300)})))
