"""The Editor: edit a model's facts one at a time, route every input to at most one edit, roll any edit back exactly.

A facade over parts that each own one concept (docs/design.md opens with the map):
    ledger     (sola/ledger.py)          every edit, live or rolled back, and the supersede links
    slots      (sola/slots.py)           each live edit's place: edit id <-> slot
    router     (sola/routing/router.py)  keys, the key table, subjects, the answer map; the decision per input
    residency  (sola/residency.py)       which edits' LoRA factors are in the layers' buffers (slot -> row)
    planner    (sola/planning.py)        requests checked and planned; batching.py trains and commits them
    store      (sola/store.py)           durable state; replay.py brings its journal in
`EditParts` (sola/parts.py) keeps the first four in step; the helper modules reach the editor through `EditorCore`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import adapters, batching, replay
from .architectures import default_layers, default_rank, task_of
from .base_editor import BaseEditor, stored_model
from .bulk import collector_paused
from .config import EditConfig, config_for_store
from .edit import Edit, now
from .errors import ConfigError, NotConvergedError, StoreError, StoreExistsError
from .fingerprint import config_hash, weights_hash
from .loading import EMBEDDED_NOTE, EMBEDDED_SOURCE, load_model
from .locking import DEFAULT_WAIT
from .nn import Decision, RoutedLoraLayer
from .nn.injection import modules
from .parts import EditParts
from .planning import PlannedEdit, Planner
from .prompts import EncodedPrompt, check_text
from .residency import Residency
from .routing import KeyTable
from .routing.queries import RoutingQueries
from .routing.router import Router
from .slots import Slots
from .store import Store
from .tasks import TASKS, Batch

METHOD = "sola"
# Edits whose LoRA factors an editor with a store keeps in memory; the others are read back from the store when an
# input is routed to them (~1 ms each). 1,024 edits of the embedded model's default layers take ~100 MB.
DEFAULT_RESIDENT_EDITS = 1024
# An editor on a store reads what other processes committed (edits, rollbacks, a calibrated threshold) before each
# change, and before answering at most this often (seconds): a stat of two files when nothing changed.
DEFAULT_REFRESH_EVERY = 1.0


class Editor(RoutingQueries, BaseEditor):
    """A base model with SoLA edits: one frozen LoRA per edit on a few layers, chosen per input by a routing table.

    Create it with `Editor.from_pretrained` (optionally backed by a durable store) or `Editor.load`. The base model's
    weights are never changed: an input that no edit claims runs the base model bit for bit.
    """

    # each edit is its own frozen LoRA, so removing one restores exactly the state before it, and an input no edit
    # claims runs the untouched base model (what these promise: `BaseEditor`)
    method = METHOD
    exact_rollback = True
    unrouted_is_base = True

    def __init__(self, model: nn.Module, tokenizer, config: EditConfig | None = None, *, source: str = "model",
                 store: Store | None = None, resident_edits: int | None = DEFAULT_RESIDENT_EDITS,
                 refresh_every: float | None = DEFAULT_REFRESH_EVERY) -> None:
        config = (config or EditConfig()).validate()
        if resident_edits is not None and resident_edits < 1:
            raise ConfigError(f"resident_edits={resident_edits} must be at least 1 (or None: keep every edit in "
                              "memory)")
        self._hold(model, tokenizer, source, config.prompt_format)
        layers = config.layers or default_layers(model)
        found = modules(model, layers)
        self._config = config.replace(layers=list(layers), rank=config.rank or default_rank(model),
                                      prompt_format=self.format.kind)
        self.task = TASKS[task_of(model.config.model_type)](model, tokenizer, self.format)
        self.decision = Decision()
        self.layers = [self._wrap(found[name], name) for name in self.config.layers]
        self.kept_dtype = getattr(torch, self.config.factor_dtype)
        for layer in self.layers:
            layer.kept_dtype = self.kept_dtype
        self.slots = Slots()
        self.router = Router(self.config, model, self.task, self.decision, self.attachments)
        self.residency = Residency(self.layers, self.config.layers, resident_edits)
        self.parts = EditParts(self.ledger, self.slots, self.router, self.residency)
        self.planner = Planner(self)
        self.refresh_every = refresh_every
        self.fingerprint = {"name": source, "config_hash": config_hash(model.config),
                            "weights_hash": weights_hash([layer.base_layer for layer in self.layers]),
                            "keys": self.router.keys.fingerprint()}
        if store is not None:
            self._attach(store)

    @property
    def config(self) -> EditConfig:
        return self._config

    @config.setter
    def config(self, config: EditConfig) -> None:  # the router routes by the config in force
        self._config = self.router.config = config

    @property
    def store(self) -> Store | None:
        """The store this editor works in (None: its edits live in memory only)."""
        return self.parts.store

    @property
    def table(self) -> KeyTable:
        """The routing table (one row per stored prompt)."""
        return self.router.table

    # -- construction ------------------------------------------------------------------------------------------------
    @classmethod
    @collector_paused()  # from the journal's parse to the replay: a pass between would walk a large store's records
    def from_pretrained(cls, model: str | os.PathLike | None = None, *, config: EditConfig | None = None,
                        store: str | os.PathLike | None = None, create: bool = True,
                        resident_edits: int | None = DEFAULT_RESIDENT_EDITS, skip_damaged: bool = False,
                        lock_wait: float = DEFAULT_WAIT,
                        refresh_every: float | None = DEFAULT_REFRESH_EVERY, device=None, dtype=None,
                        device_map=None) -> Editor:
        """Load a base model (None: the embedded SmolLM2-135M-Instruct; else a local Hugging Face directory or a hub id
        in the local cache) and, if `store` is given, open that store or (with `create`) create it.

        An existing store keeps the config it was made with; passing a config that differs from it is an error,
        except in the training fields (`EditConfig.TRAINING_FIELDS`: steps, step size, what to do with an edit that
        does not converge), which apply to this editor's edits only. Other processes may use the same store at the
        same time: changes wait up to `lock_wait` seconds for another writer, and the editor reads what others
        committed before each change and, before answering, at most every `refresh_every` seconds (None: only
        when `refresh()` is called). A damaged store is an error naming the damage and the fix; `skip_damaged=True`
        opens the rest read-only.

        Large models: `dtype` ("bfloat16", ...; default float32), `device` ("cuda", ...) and `device_map` ("auto":
        sharded with accelerate) are passed to transformers; LoRA factors and keys stay float32 (stored as
        `factor_dtype`), and a store holds no device, so one made on a GPU opens on a CPU in the same dtype."""
        existing = store is not None and Store.exists(store)
        if store is not None and not existing and not create:
            raise StoreError(f"there is no store at {store}; make one by editing into it (`sola edit --store {store} "
                             "PROMPT TARGET`, or Editor.from_pretrained(store=...)), or check the path")
        opened = Store.open(store, skip_damaged=skip_damaged, lock_wait=lock_wait) if existing else None
        if opened is not None:
            config = config_for_store(opened.manifest["config"], config, store)
        name, network, tokenizer = load_model(model, dtype=dtype, device_map=device_map)
        if device is not None:
            network.to(device)
        editor = cls(network, tokenizer, config, source=name, resident_edits=resident_edits,
                     refresh_every=refresh_every)
        if opened is None and store is not None:
            try:
                opened = Store.create(store, editor._manifest(), lock_wait=lock_wait)
            except StoreExistsError:  # another process created it meanwhile: open theirs (with a compatible config)
                opened = Store.open(store, skip_damaged=skip_damaged, lock_wait=lock_wait)
                config_for_store(opened.manifest["config"], config, store)
        if opened is not None:
            editor._attach(opened, skip_damaged=skip_damaged)
        return editor

    @classmethod
    def load(cls, path: str | os.PathLike, model: str | os.PathLike | None = None, *,
             resident_edits: int | None = DEFAULT_RESIDENT_EDITS, skip_damaged: bool = False) -> Editor:
        """Open a saved store with the base model it was made on (or `model`, which must be the same model)."""
        source = model if model is not None else stored_model(Store.read_manifest(path), path)
        return cls.from_pretrained(source, store=path, create=False, resident_edits=resident_edits,
                                   skip_damaged=skip_damaged)

    def _wrap(self, module: nn.Module, name: str) -> RoutedLoraLayer:
        if isinstance(module, RoutedLoraLayer):
            raise ConfigError(f"{name} is already edited by another Editor; load a fresh copy of the model")
        return self.attachments.inject(name, lambda base: RoutedLoraLayer(base, self.config.rank, self.config.scaling,
                                                                    self.decision))

    def _manifest(self) -> dict[str, Any]:
        return {"method": METHOD, "config": self.config.to_dict(), "model": self.fingerprint,
                "model_note": EMBEDDED_NOTE if self.source == EMBEDDED_SOURCE else None}

    def _attach(self, store: Store, skip_damaged: bool = False) -> None:
        """Check that the store belongs to this model, then replay its journal into memory."""
        replay.attach(self, store, skip_damaged)
        self.parts.store, self.parts.refreshed = store, time.monotonic()

    # -- other processes ---------------------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Bring in what other processes committed to this editor's store since it last looked: edits, rollbacks, a
        calibrated threshold. Returns how many journal records were new. Done before every change automatically
        (under the store's lock) and before answering at most every `refresh_every` seconds."""
        new = self.store.refresh() if self.store is not None else []
        replay.apply(self, new)
        return len(new)

    def _before_asking(self) -> None:
        super()._before_asking()
        if self.store is not None and self.refresh_every is not None \
                and time.monotonic() - self.parts.refreshed >= self.refresh_every:
            replay.apply(self, self.store.refresh() if self.store.changed() else [])

    @contextmanager
    def steady(self) -> Iterator[Editor]:
        """Inside, this editor reads others' commits once, on entry, and then no more: several questions asked inside
        (`explain`, then `generate`) see one state of the store."""
        self._before_asking()
        every, self.refresh_every = self.refresh_every, None
        try:
            yield self
        finally:
            self.refresh_every = every

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the store's write lock, having read everything committed before it: what is done inside is one change
        of the store, with no other process's commit between its steps (no lock without a store)."""
        self._check_open()
        if self.store is None:
            yield
            return
        with self.store.writing() as new:
            replay.apply(self, new)
            yield

    # -- routing -----------------------------------------------------------------------------------------------------
    @contextmanager
    def _routed(self, prompts: list[EncodedPrompt], batch: Batch) -> Iterator[None]:
        """Everything run inside uses one decision per row, made from the prompts alone."""
        try:
            if len(self.router) == 0 or self._disabled:
                self.decision.clear()
            else:
                self.router.decide(prompts, batch, lambda slots: self.residency.rows(slots, self.parts.load))
            yield
        finally:
            self.decision.clear()

    def calibrate_threshold(self, prompts: Iterable[str], max_activation_rate: float = 0.01, *,
                            against: Iterable[str] | None = None) -> float:
        """Set the threshold so that at most `max_activation_rate` of these unrelated prompts would activate an edit.

        Distances are to the nearest key of the stored edits, or, with `against`, of those prompts (e.g. the edit
        prompts about to be made); with neither, the unrelated prompts' distances to each other. The threshold is
        saved with the store.

        With key="subject" this sets `unnamed_threshold`, the whole-prompt threshold of edits made without a subject:
        an unrelated prompt names no edited subject, so those are the only edits it can reach.
        """
        encoded = [self.encode(check_text(p, "calibration prompt")) for p in prompts]
        edit_prompts = [self.encode(check_text(p, "prompt")) for p in against] if against is not None else None
        field, threshold = self.router.calibrated(encoded, max_activation_rate, edit_prompts)
        with self.writing():
            self.config = self.config.replace(**{field: threshold})
            if self.store is not None:  # only this field: the store's other fields (and others' changes) stay
                self.store.update_manifest({"config": {**self.store.manifest["config"], field: threshold}})
        return threshold

    # -- editing -----------------------------------------------------------------------------------------------------
    def edit(self, prompt: str | list[str], target: str, *, subject: str | None = None,
             aliases: Iterable[str] = (), supersedes: str | None = None, new_fact: bool = False,
             progress=None) -> Edit:
        """Teach the model to answer `prompt` (or each of several prompts: one LoRA, one key per prompt) with
        `target`, followed by the end of the answer. Returns the committed `Edit`.

        `subject` names what the fact is about; with key="subject" only inputs that name it reach the edit. Without
        one, the subject is read from the prompt (`EditConfig.infer_subject`; the edit's `subject_inferred` says so).
        `aliases` are other names of the subject ("JFK" for "John F. Kennedy"); inputs naming one reach the edit too.
        Shortened names ("Kennedy"), accents and a leading "The" need no alias.

        An edit of a fact that is already edited is an update: it supersedes the answering edit of that fact (whose
        keys then lead here, and whose prompts this edit also learns to answer with `target`; rolling this edit back
        brings that one back exactly). Which edits count as the same fact is `EditConfig.supersede`'s rule;
        `supersedes=ID` names the edit to update, `new_fact=True` keeps both.

        If training does not reproduce the target within `max_steps`, `EditConfig.on_no_converge` decides: "refuse"
        (the default) stores nothing and raises `NotConvergedError`; "commit" stores it with `converged=False`."""
        started = time.perf_counter()
        request = self.planner.check(prompt, target, subject, supersedes, new_fact, aliases)
        with self.writing():
            (edit, stored), = batching.train_and_commit(self, [self.planner.plan(request)], started, progress)
        if not stored:
            raise NotConvergedError(batching.not_converged([edit], self.config), committed=[], failed=[(0, edit)])
        return edit

    def plan(self, prompt: str | list[str], target: str, *, subject: str | None = None, aliases: Iterable[str] = (),
             supersedes: str | None = None, new_fact: bool = False) -> PlannedEdit:
        """What `edit` with these arguments would do now, without training or storing anything: a new fact or an
        update (`supersedes`: the edit it would replace), the live edit its prompts route to, and why
        ("same question: relation distance 0.081", "another question: relation 'founding date', not 'founder'")."""
        self._before_asking()
        return self.planner.preview(self.planner.check(prompt, target, subject, supersedes, new_fact, aliases))

    def edit_many(self, requests: Iterable[dict[str, Any]], progress: bool = False, *, batch_size: int = 16,
                  skip_committed: bool = False, on_result: Callable[[int, Edit, str], None] | None = None
                  ) -> list[Edit]:
        """Make many edits, `batch_size` of them trained together in one batch (each its own LoRA; the same result as
        editing them one by one, up to rounding, and several times faster). Each request is a dict with `prompt` and
        `target` (EasyEdit's `target_new`, zsRE's `src`/`alt` are accepted), optionally `subject`, `prompts` (a list)
        instead of one prompt, `supersedes` or `new_fact` (see `edit`). Returns one `Edit` per request, in order.

        Every request is checked before anything is trained: a bad one raises (its message names the request counted
        from 1; the error's `request_index` counts from 0) and nothing is edited. Edits commit in request order, one
        batch at a time (each batch holds the store's lock while it trains and commits); a request about the same
        fact as one in the current batch waits for that batch to commit, so updates within a file chain as they
        would one by one.

        `skip_committed`: a request that a live edit was already made from (same prompts, target and subject) is
        not made again; its place in the result holds that edit. Re-running an interrupted file so neither retrains
        nor duplicates. `on_result(index, edit, status)` is called as each request is settled, status "committed",
        "skipped" or "refused" (did not converge under on_no_converge="refuse"; its edit has no id). Refused requests
        do not stop the others; at the end they raise `NotConvergedError`, which holds what was committed."""
        return batching.edit_many(self, requests, progress, batch_size, skip_committed, on_result)

    def import_edit(self, edit: Edit, tensors: dict[str, torch.Tensor]) -> Edit:
        """Add an edit trained elsewhere on the same base model, layers and rank (e.g. read from another store with
        `Store.read_tensors`): its LoRA factors are used as they are, its keys are computed by this editor's key
        strategy from its prompts. Returns the edit under a new id of this editor.

        A SoLA edit's LoRA depends only on its own prompts, target and number, never on the other edits or on how
        inputs are routed, so importing edits in order into an editor with another key strategy gives exactly the
        editor that editing from scratch would give (this is how `sola bench --reuse-adapters` compares keys)."""
        return batching.import_edit(self, edit, tensors)

    def export_peft(self, edit_id: str, directory: str | os.PathLike) -> Path:
        """Write a live edit's LoRA as a standard PEFT adapter directory (`peft.PeftModel.from_pretrained(base,
        directory)` then computes what this editor computes for inputs routed to it; see sola.adapters)."""
        return adapters.export_adapter(self, edit_id, directory)

    def import_peft(self, directory: str | os.PathLike, prompts: str | list[str], target: str, *,
                    subject: str | None = None) -> Edit:
        """Make a PEFT LoRA adapter (same layers and rank) the edit of `prompts` -> `target`: its keys are computed
        here from the prompts, so it is routed, superseded and rolled back like an edit trained here. An adapter that
        does not reproduce the target after the prompts is refused like an edit that did not converge
        (`EditConfig.on_no_converge`)."""
        return adapters.import_adapter(self, directory, prompts, target, subject)

    def rollback(self, edit_id: str) -> Edit:
        """Remove an edit: its keys leave the routing table and its slot is freed. Afterwards every input computes what
        it would have computed had the edit never been made."""
        with self.writing():  # a rollback made elsewhere meanwhile counts
            self.live_edit(edit_id)
            at = now()
            if self.store is not None:
                self.store.commit_rollback(edit_id, at)
            return self.parts.forget(edit_id, at)

    # -- persistence and reporting -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the live edits to a new store directory (the store this editor works in is always saved already)."""
        path = Path(path)
        if self.store is not None and path.resolve() == self.store.path.resolve():
            return path
        store = Store.create(path, self._manifest())
        for edit in self.edits():
            store.commit_edit(edit.to_dict(), batching.stored_tensors(self, edit.id))
        return path

    def info(self) -> dict[str, Any]:
        self._before_asking()
        config = self.config
        return {"model": self.source, "model_note": EMBEDDED_NOTE if self.source == EMBEDDED_SOURCE else None,
                "method": METHOD, "task": self.task.kind, "prompt_format": self.format.kind, "layers": config.layers,
                "rank": config.rank, "key": config.key, "distance": config.resolved_distance(),
                "threshold": config.default_threshold(),
                "unnamed_threshold": config.resolved_unnamed_threshold() if config.key == "subject" else None,
                "edits": len(self.slots), "superseded": self.ledger.superseded_count,
                "rolled_back": len(self.ledger) - self.ledger.live_count, "supersede": config.supersede,
                "keys": len(self.router), "slots": self.layers[0].capacity, "resident_edits": self.residency.resident,
                "resident_capacity": self.residency.capacity,
                "key_search": "sign codes, candidates re-scored exactly" if self.router.table.approximates else "exact",
                "memory_bytes": {"lora": sum(layer.lora_A.nbytes + layer.lora_B.nbytes for layer in self.layers),
                                 "keys": self.router.table.keys.nbytes,
                                 **({"key_codes": codes} if (codes := self.router.table.codes_nbytes) else {})},
                "store": str(self.store.path) if self.store is not None else None}

