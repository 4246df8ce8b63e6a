"""The Editor: edit a model's facts one at a time, route every input to at most one edit, roll any edit back exactly."""

from __future__ import annotations

import os
import time
import zlib
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from .asking import Asking
from .architectures import default_layers, default_rank, task_of
from .config import PREFIX_CONTEXTS, STORED_DEFAULTS, EditConfig
from .edit import Edit
from .errors import (ConfigError, CorruptStoreError, InvalidEditError, ModelMismatchError, NotConvergedError,
                     StoreError, StoreExistsError, UnknownEditError, at_request)
from .fingerprint import config_hash, describe_mismatch, weights_hash
from .ledger import Ledger
from .loading import EMBEDDED_NOTE, EMBEDDED_SOURCE, load_model
from .locking import DEFAULT_WAIT
from .nn import Decision, RoutedLoraLayer
from .requests import parse_request
from .prompts import EncodedPrompt, PromptFormat, check_text, check_token_limits
from .routing import KeyTable, Route, key_strategy
from .routing.subjects import SubjectIndex, relation_text
from .residency import Residency
from .store import Damage, Store, damage_message, id_number
from .tasks import TASKS, Batch
from .training import train_edits

METHOD = "sola"
# Edits whose LoRA factors an editor with a store keeps in memory; the others are read back from the store when an
# input is routed to them (~1 ms each). 1,024 edits of the embedded model's default layers take ~100 MB.
DEFAULT_RESIDENT_EDITS = 1024
# An editor on a store reads what other processes committed (edits, rollbacks, a calibrated threshold) before each
# change, and before answering at most this often (seconds): a stat of two files when nothing changed.
DEFAULT_REFRESH_EVERY = 1.0


class _QueryCaptured(Exception):
    """Raised at the key module to stop a forward pass once the query has been read."""

    def __init__(self, queries: torch.Tensor) -> None:
        self.queries = queries


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Editor(Asking):
    """A base model with SoLA edits: one frozen LoRA per edit on a few layers, chosen per input by a routing table.

    Create it with `Editor.from_pretrained` (optionally backed by a durable store) or `Editor.load`. The base model's
    weights are never changed: an input that no edit claims runs the base model bit for bit.
    """

    def __init__(self, model: nn.Module, tokenizer, config: EditConfig | None = None, *, source: str = "model",
                 store: Store | None = None, resident_edits: int | None = DEFAULT_RESIDENT_EDITS,
                 refresh_every: float | None = DEFAULT_REFRESH_EVERY) -> None:
        config = (config or EditConfig()).validate()
        if resident_edits is not None and resident_edits < 1:
            raise ConfigError(f"resident_edits={resident_edits} must be at least 1 (or None: keep every edit in memory)")
        self.model, self.tokenizer, self.source = model, tokenizer, source
        model.eval().requires_grad_(False)
        modules = dict(model.named_modules())
        layers = config.layers or default_layers(model)
        missing = [name for name in layers if name not in modules]
        if missing:
            linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)][:8]
            raise ConfigError(f"layers {missing} are not modules of this model; names look like {linear}")
        self.format = PromptFormat(tokenizer, config.prompt_format)
        self.config = config.replace(layers=list(layers), rank=config.rank or default_rank(model),
                                     prompt_format=self.format.kind)
        self.task = TASKS[task_of(model.config.model_type)](model, tokenizer, self.format)
        self.decision = Decision()
        self.layers = [self._wrap(modules, name) for name in self.config.layers]
        self._kept = getattr(torch, self.config.factor_dtype)
        for layer in self.layers:
            layer.kept_dtype = self._kept
        self.residency = Residency(self.layers, self.config.layers, resident_edits)
        self.keys = key_strategy(self.config.key, self.config.encoder)
        self._key_hook = None
        if self.keys.inside_model:
            self._hook_key_module(dict(model.named_modules()))
        self.table = KeyTable(self._key_dim(), self.config.resolved_distance())
        self.subjects = SubjectIndex()  # used by key="subject": which edits an input names
        self._unnamed: set[int] = set()  # key="subject": slots of edits made without a subject (whole-prompt keys)
        self.ledger = Ledger()  # every edit, live or rolled back, and the superseding links between live ones
        self._slot_of: dict[str, int] = {}  # live edits only
        self._owner: dict[int, str] = {}  # the inverse of _slot_of, for routing answers
        # Superseding: a key keeps the slot of the edit whose prompt made it; `_answer[slot]` is the slot that answers
        # for that edit's keys (itself, or the newest live edit of its fact, as the ledger's links say).
        self._answer = torch.zeros(0, dtype=torch.long)
        self._free: list[int] = []
        self._counter = 0  # the last edit number of an editor without a store (a store allocates its own)
        self.refresh_every = refresh_every
        self._refreshed = time.monotonic()
        self._disabled = False
        self.store: Store | None = None
        self.fingerprint = {
            "name": source,
            "config_hash": config_hash(model.config),
            "weights_hash": weights_hash([layer.base_layer for layer in self.layers]),
            "keys": self.keys.fingerprint(),
        }
        if store is not None:
            self._attach(store)

    # -- construction ------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str | os.PathLike | None = None, *, config: EditConfig | None = None,
                        store: str | os.PathLike | None = None, create: bool = True,
                        resident_edits: int | None = DEFAULT_RESIDENT_EDITS, skip_damaged: bool = False,
                        lock_wait: float = DEFAULT_WAIT,
                        refresh_every: float | None = DEFAULT_REFRESH_EVERY) -> "Editor":
        """Load a base model (None: the embedded SmolLM2-135M-Instruct; else a local Hugging Face directory or a hub id
        in the local cache) and, if `store` is given, open that store or (with `create`) create it.

        An existing store keeps the config it was made with; passing a config that differs from it is an error,
        except in the training fields (`EditConfig.TRAINING_FIELDS`: steps, step size, what to do with an edit that
        does not converge), which apply to this editor's edits only. Other processes may use the same store at the
        same time: changes wait up to `lock_wait` seconds for another writer, and the editor reads what others
        committed before each change and, before answering, at most every `refresh_every` seconds (None: only
        when `refresh()` is called). A damaged store is an error naming the damage and the fix; `skip_damaged=True`
        opens the rest read-only."""
        existing = store is not None and Store.exists(store)
        if store is not None and not existing and not create:
            raise StoreError(f"there is no store at {store}; make one by editing into it (`sola edit --store {store} "
                             "PROMPT TARGET`, or Editor.from_pretrained(store=...)), or check the path")
        opened = Store.open(store, skip_damaged=skip_damaged, lock_wait=lock_wait) if existing else None
        if opened is not None:
            config = _store_config(opened, config, store)
        name, network, tokenizer = load_model(model)
        editor = cls(network, tokenizer, config, source=name, resident_edits=resident_edits,
                     refresh_every=refresh_every)
        if opened is None and store is not None:
            try:
                opened = Store.create(store, editor._manifest(), lock_wait=lock_wait)
            except StoreExistsError:  # another process created it meanwhile: open theirs (with a compatible config)
                opened = Store.open(store, skip_damaged=skip_damaged, lock_wait=lock_wait)
                _store_config(opened, config, store)
        if opened is not None:
            editor._attach(opened, skip_damaged=skip_damaged)
        return editor

    @classmethod
    def load(cls, path: str | os.PathLike, model: str | os.PathLike | None = None, *,
             resident_edits: int | None = DEFAULT_RESIDENT_EDITS, skip_damaged: bool = False) -> "Editor":
        """Open a saved store with the base model it was made on (or `model`, which must be the same model)."""
        manifest = Store.read_manifest(path)
        source = model if model is not None else manifest["model"]["name"]
        if model is None and source != EMBEDDED_SOURCE and not Path(source).exists():
            raise StoreError(f"the store {path} was made on {source!r}, which is not here; pass model=... with a copy "
                             "of that model")
        return cls.from_pretrained(source, store=path, create=False, resident_edits=resident_edits,
                                   skip_damaged=skip_damaged)

    def _wrap(self, modules: dict[str, nn.Module], name: str) -> RoutedLoraLayer:
        module = modules[name]
        if isinstance(module, RoutedLoraLayer):
            raise ConfigError(f"{name} is already edited by another Editor; load a fresh copy of the model")
        parent_name, _, child = name.rpartition(".")
        layer = RoutedLoraLayer(module, self.config.rank, self.config.scaling, self.decision)
        setattr(modules[parent_name] if parent_name else self.model, child, layer)
        return layer

    def _hook_key_module(self, modules: dict[str, nn.Module]) -> None:
        name = self.config.key_module or self.config.layers[0]
        if name not in modules:
            raise ConfigError(f"key_module {name!r} is not a module of this model")
        module = modules[name]
        if isinstance(module, RoutedLoraLayer):
            module = module.base_layer

        def read_query(_module, args, kwargs):
            hidden = args[0] if args else kwargs.get("hidden_states")
            self.decision.decide_from(hidden)

        self._key_hook = module.register_forward_pre_hook(read_query, with_kwargs=True)
        self._key_module_name = name

    def _key_dim(self) -> int | None:
        if not self.keys.inside_model:
            return self.keys.dim
        return None  # read off the first key

    def _manifest(self) -> dict[str, Any]:
        return {"method": METHOD, "config": self.config.to_dict(), "model": self.fingerprint,
                "model_note": EMBEDDED_NOTE if self.source == EMBEDDED_SOURCE else None}

    def _attach(self, store: Store, skip_damaged: bool = False) -> None:
        """Check that the store belongs to this model, then replay its journal into memory. Edits whose files cannot
        be read make this an error naming them, or with `skip_damaged` are left out (the store is then read-only)."""
        manifest = store.manifest
        if manifest.get("method") != METHOD:
            raise StoreError(f"{store.path} holds edits of method {manifest.get('method')!r}, not {METHOD!r}")
        mismatch = describe_mismatch(manifest.get("model", {}), self.fingerprint)
        if mismatch:
            raise ModelMismatchError(f"{store.path}: {mismatch}")
        if manifest["model"].get("keys") != self.fingerprint["keys"]:
            raise ModelMismatchError(f"{store.path}: its keys come from {manifest['model'].get('keys')} but this editor "
                                     f"computes keys with {self.fingerprint['keys']}; use the same key encoder")
        records = store.journal()
        rolled = {r["id"] for r in records if r["op"] == "rollback"}
        live = [r for r in records if r["op"] == "edit" and r["id"] not in rolled]
        # read what is needed before changing anything: every live edit's keys, and the factors of the newest edits
        # that fit in memory (the others are read when an input is routed to them)
        unreadable = self._unreadable(store, live) if skip_damaged or store.damage else []
        skipped = {d.edit_id for d in unreadable}
        try:
            keys, counts, factors, resident = self._read_live(store, [r for r in live if r["id"] not in skipped])
        except CorruptStoreError:
            unreadable = self._unreadable(store, live)
            if not skip_damaged:
                raise CorruptStoreError(damage_message(store.path, unreadable)) from None
            skipped = {d.edit_id for d in unreadable}
            keys, counts, factors, resident = self._read_live(store, [r for r in live if r["id"] not in skipped])
        if unreadable:
            store.damage += [d for d in unreadable if d not in store.damage]
            store.read_only = True
            records = [r for r in records if r.get("id") not in skipped]
            live = [r for r in live if r["id"] not in skipped]
        assert not len(self.ledger), "a store is attached to a new editor only"
        links = self.ledger.replay(records)  # the records become Edits when asked for
        ids = [r["id"] for r in live]
        slots = list(range(len(live)))  # a new editor: live edits take the slots 0..n-1 in creation order
        self._slot_of, self._owner = dict(zip(ids, slots)), dict(zip(slots, ids))
        self._answer = torch.arange(max(8, len(live)))
        if self.keys.needs_subject:
            for record, slot in zip(live, slots):
                self._add_subject(record.get("subject"), slot)
        for slot in range(len(live) - resident, len(live)):
            self.residency.put(slot, factors[ids[slot]], durable=True)
        self.table.add_rows(keys, torch.repeat_interleave(torch.arange(len(live)), counts))
        self._answer_links(links)  # in creation order, as they were made
        store.forget_index()  # the routing table holds the keys now
        self.store = store
        self._refreshed = time.monotonic()

    def _read_live(self, store: Store, live: list[dict[str, Any]]):
        """(keys, key rows per edit, factors of the resident edits, how many are resident) of these live edits."""
        capacity = self.residency.capacity
        resident = len(live) if capacity is None else min(capacity, len(live))
        factors = {r["id"]: store.read_tensors(r["id"]) for r in live[len(live) - resident:]}
        keys, counts = store.read_keys_many([r["id"] for r in live])
        return keys, counts, factors, resident

    def _unreadable(self, store: Store, live: list[dict[str, Any]]) -> list[Damage]:
        """Damage of the live edits' files that opening would read, one per edit (edits skipped by the store's own
        open, e.g. a duplicated id, too)."""
        found = [d for d in store.damage if d.edit_id is not None and not d.harmless]
        named = {d.edit_id for d in found}
        capacity = self.residency.capacity
        resident = {r["id"] for r in (live if capacity is None else live[max(0, len(live) - capacity):])}
        for record in live:
            if record["id"] in named:
                continue
            try:
                store.read_tensors(record["id"]) if record["id"] in resident else store.read_keys(record["id"])
            except CorruptStoreError as err:
                path = store.tensor_path(record["id"])
                kind = "tensors-missing" if not path.exists() else "tensors-unreadable"
                found.append(Damage(kind, f"tensors/{path.name}", str(err).split(";")[0], edit_id=record["id"]))
        return found

    # -- other processes ---------------------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Bring in what other processes committed to this editor's store since it last looked: edits, rollbacks, a
        calibrated threshold. Returns how many journal records were new. Done before every change automatically
        (under the store's lock) and before answering at most every `refresh_every` seconds."""
        if self.store is None:
            return 0
        new = self.store.refresh()
        self._apply(new)
        return len(new)

    def _maybe_refresh(self) -> None:
        if self.store is None or self.refresh_every is None:
            return
        if time.monotonic() - self._refreshed >= self.refresh_every:
            if self.store.changed():
                self._apply(self.store.refresh())
            else:
                self._refreshed = time.monotonic()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the store's write lock, having brought in everything committed before (no-op without a store)."""
        if self.store is None:
            yield
            return
        with self.store.writing() as new:
            self._apply(new)
            yield

    def _apply(self, records: list[dict[str, Any]]) -> None:
        """Journal records committed by another process, in order: the same state as if this editor had made them."""
        for record in records:
            if record["op"] == "edit" and record["id"] not in self.ledger:
                keys = self.store.read_keys(record["id"])
                edit = Edit.from_dict({**record, "rolled_back": None, "superseded_by": None})
                self._install(edit.id, {"keys": keys}, edit.subject, durable=True, resident=False)
                self.ledger.add(edit)
                older = self.ledger.live_predecessor(edit.supersedes)
                if older is not None and self.ledger.successor(older) is None:
                    self._link(older, edit.id)
            elif record["op"] == "rollback" and record["id"] in self.ledger and self.ledger.get(record["id"]).live:
                self._forget(record["id"], record.get("at", ""), record.get("reason"))
        if self.store is not None:
            stored = self.store.manifest.get("config", {})
            changes = {k: stored[k] for k in ("threshold", "unnamed_threshold")
                       if k in stored and stored[k] != getattr(self.config, k)}
            if changes:
                self.config = self.config.replace(**changes)
        self._refreshed = time.monotonic()

    # -- slots and tensors -------------------------------------------------------------------------------------------
    def _allocate(self) -> int:
        """A free slot (place in the routing table) for a new edit."""
        slot = self._free.pop() if self._free else len(self._slot_of)
        if slot >= len(self._answer):
            self._answer = torch.cat([self._answer, torch.arange(len(self._answer), max(8, 2 * len(self._answer)))])
        self._answer[slot] = slot
        return slot

    def _answering(self, slots: torch.Tensor) -> torch.Tensor:
        """Key slots -> the slots that answer for them (-1 stays -1)."""
        return torch.where(slots >= 0, self._answer[slots.clamp(min=0)], slots)

    def _link(self, older: str, newer: str) -> None:
        """`newer` supersedes the answering edit `older`: every key that reached `older` now reaches `newer`."""
        self._answer[self._answer == self._slot_of[older]] = self._slot_of[newer]
        self.ledger.link(older, newer)

    def _answer_links(self, links: list[tuple[str, str]]) -> None:
        """The ledger's links (older, newer), made in this order on a table where every key still answered for itself
        (opening a store), written to `_answer` at once: who answers for whom is worked out first."""
        answered: dict[int, list[int]] = {}  # answering slot -> the slots whose keys it answers for
        for older, newer in links:
            into, moved = self._slot_of[newer], self._slot_of[older]
            answered.setdefault(into, [into]).extend(answered.pop(moved, [moved]))
        for slot, slots in answered.items():
            self._answer[torch.tensor(slots)] = slot

    def _install(self, edit_id: str, tensors: dict[str, torch.Tensor], subject: str | None, *, durable: bool,
                 resident: bool = True, add_keys: bool = True) -> int:
        slot = self._allocate()
        if self.keys.needs_subject:
            self._add_subject(subject, slot)
        if resident or not durable:
            self.residency.put(slot, tensors, durable)
        if add_keys:
            self.table.add(tensors["keys"], slot)
        self._slot_of[edit_id] = slot
        self._owner[slot] = edit_id
        return slot

    def _add_subject(self, subject: str | None, slot: int) -> None:
        if subject is None:
            self._unnamed.add(slot)
        else:
            self.subjects.add(subject, slot)

    def _tensors_of(self, edit_id: str) -> dict[str, torch.Tensor]:
        slot = self._slot_of[edit_id]
        factors = self.residency.read(slot, self._load)
        tensors = {"keys": self.table.keys_of(slot)}
        for name in self.config.layers:
            for part in ("lora_A", "lora_B"):
                tensors[f"{name}.{part}"] = factors[f"{name}.{part}"].to(self._kept)
        return tensors

    def _load(self, slot: int) -> dict[str, torch.Tensor]:
        """An evicted edit's factors, read back from the store."""
        assert self.store is not None, "only edits with a durable copy are evicted"
        return self.store.read_tensors(self._owner[slot])

    def _rows(self, slots: torch.Tensor) -> torch.Tensor:
        """Answering slots -> rows of the layers' buffers, reading evicted edits back."""
        return self.residency.rows(slots, self._load)

    # -- routing -----------------------------------------------------------------------------------------------------
    def _encode(self, prompt: str) -> EncodedPrompt:
        encoded = self.format.encode(prompt)
        self.task.check_length(encoded)
        return encoded

    def _queries(self, prompts: list[EncodedPrompt]) -> torch.Tensor:
        """(B, d) routing queries of prompts, computed on the base model (nothing before the key module is edited).

        One prompt at a time: exactly the computation that routes that prompt at inference, so a stored prompt finds
        its own key at distance zero (padding a batch would change the numbers in the last bits)."""
        return torch.cat([self._query(p) for p in prompts])

    def _query(self, prompt: EncodedPrompt) -> torch.Tensor:
        if not self.keys.inside_model:
            return self.keys.encode([prompt.text])
        batch = self.task.batch([prompt], None)

        def capture(hidden, mask):
            raise _QueryCaptured(self.keys.pool(hidden, mask))

        self.decision.arm(batch.mask, capture)
        try:
            with torch.no_grad():
                self.model(**batch.inputs)
        except _QueryCaptured as captured:
            return captured.queries
        finally:
            self.decision.clear()
        raise RuntimeError(f"the forward pass never reached the key module {self._key_module_name}")

    def _router(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._rows(self._answering(self.table.route(self.keys.pool(hidden, mask),
                                                           self.config.resolved_threshold())))

    @contextmanager
    def _routed(self, prompts: list[EncodedPrompt], batch: Batch) -> Iterator[None]:
        """Everything run inside uses one decision per row, made from the prompts alone."""
        try:
            if len(self.table) == 0 or self._disabled:
                self.decision.clear()
            elif self.keys.inside_model:
                self.decision.arm(batch.mask, self._router)
            else:
                dist, slots = self._nearest_texts([p.text for p in prompts])
                threshold = self.config.resolved_threshold()
                self.decision.fix(self._rows(self._answering(
                    torch.where(dist < threshold, slots, torch.full_like(slots, -1)))))
            yield
        finally:
            self.decision.clear()

    def _before_asking(self) -> None:
        self._maybe_refresh()

    @contextmanager
    def disabled(self) -> Iterator["Editor"]:
        """Inside, every input runs the base model (no edit is routed): `with editor.disabled(): editor.generate(p)`
        gives the unedited model's answer, bit for bit, without touching the edits."""
        previous, self._disabled = self._disabled, True
        try:
            yield self
        finally:
            self._disabled = previous

    def route(self, prompt: str) -> Route | None:
        """The edit this prompt is routed to and its key distance, or None if it runs on the base model."""
        self._maybe_refresh()
        found = self.nearest(prompt)
        return found if found is not None and found.distance < self.config.resolved_threshold() else None

    def nearest(self, prompt: str) -> Route | None:
        """The nearest live edit and its distance, whether or not it is under the threshold (None without edits)."""
        self._maybe_refresh()
        if len(self.table) == 0:
            return None
        encoded = self._encode(prompt)
        if self.keys.inside_model:
            dist, slot = self.table.nearest(self._queries([encoded]))
        else:
            dist, slot = self._nearest_texts([encoded.text])
        if int(slot[0]) < 0:
            return None  # key="subject": the prompt names no edited subject
        return Route(self._owner[int(self._answering(slot)[0])], float(dist[0]))

    def _nearest_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance (B,), slot (B,)) of each text's nearest edit, for keys computed outside the model. With
        key="subject", the candidates are the edits whose subject the text names (by relation) and the edits made
        without a subject (by the whole text, the distance rescaled to the subject key's threshold); slot -1 and
        distance inf if there are none."""
        if not self.keys.needs_subject:
            return self.table.nearest(self.keys.encode(texts))
        if self._unnamed and len(self._unnamed) == len(self._slot_of):  # no edit names a subject: key="encoder"
            dists, slots = self.table.nearest(self.keys.encode(texts))
            return self._on_subject_scale(dists), slots
        dists, slots = torch.full((len(texts),), float("inf")), torch.full((len(texts),), -1, dtype=torch.long)
        unnamed = sorted(self._unnamed)
        whole = self.keys.encode(texts) if unnamed else None  # the queries key="encoder" would route by
        for row, text in enumerate(texts):
            found = [self.table.nearest_among(self.keys.relation([text], [subject])[0], candidates)
                     for subject, candidates in self.subjects.find(text).items()]
            if unnamed:
                distance, slot = self.table.nearest_among(whole[row], unnamed)
                found.append((float(self._on_subject_scale(torch.tensor([distance]))[0]), slot))
            for distance, slot in found:
                if distance < dists[row]:
                    dists[row], slots[row] = distance, slot
        return dists, slots

    def _on_subject_scale(self, whole: torch.Tensor) -> torch.Tensor:
        """key="subject": whole-prompt distances (edits without a subject) put on the scale of `threshold`, such that a
        distance is under `threshold` exactly when it was under `unnamed_threshold` (multiplying alone can round a
        distance equal to `unnamed_threshold` to just under `threshold`, and route it)."""
        threshold, unnamed = self.config.resolved_threshold(), self.config.resolved_unnamed_threshold()
        scaled = (whole.double() * (threshold / unnamed)).to(whole.dtype)
        within = whole < unnamed
        below = torch.nextafter(torch.tensor(threshold, dtype=whole.dtype), torch.tensor(0.0, dtype=whole.dtype))
        at_least = torch.tensor(threshold, dtype=whole.dtype)
        return torch.where(within, torch.minimum(scaled, below), torch.maximum(scaled, at_least))

    def calibrate_threshold(self, prompts: Iterable[str], max_activation_rate: float = 0.01, *,
                            against: Iterable[str] | None = None) -> float:
        """Set the threshold so that at most `max_activation_rate` of these unrelated prompts would activate an edit.

        Distances are to the nearest key of the stored edits, or, with `against`, of those prompts (e.g. the edit
        prompts about to be made); with neither, the unrelated prompts' distances to each other. The threshold is
        saved with the store.

        With key="subject" this sets `unnamed_threshold`, the whole-prompt threshold of edits made without a subject:
        an unrelated prompt names no edited subject, so those are the only edits it can reach.
        """
        texts = [check_text(p, "calibration prompt") for p in prompts]
        if len(texts) < 2 or not 0 <= max_activation_rate < 1:
            raise InvalidEditError("calibration needs at least 2 prompts and 0 <= max_activation_rate < 1")
        queries = self._queries([self._encode(t) for t in texts])  # key="subject": whole-prompt embeddings
        stored = sorted(self._unnamed) if self.keys.needs_subject else None
        if against is not None:
            keys = self._queries([self._encode(check_text(p, "prompt")) for p in against])
            table = KeyTable(keys.shape[1], self.config.resolved_distance())
            table.add(keys, slot=0)
            dist = torch.cat([table.nearest(q.unsqueeze(0))[0] for q in queries])
        elif len(self.table) and stored is None:  # one query at a time, exactly as `route` computes it
            dist = torch.cat([self.table.nearest(q.unsqueeze(0))[0] for q in queries])
        elif stored:
            dist = torch.tensor([self.table.nearest_among(q, stored)[0] for q in queries])
        else:
            probe = KeyTable(queries.shape[1], self.config.resolved_distance())
            probe.add(queries, slot=0)
            pairwise = probe.distances(queries)
            dist = pairwise.fill_diagonal_(float("inf")).min(dim=1).values
        ordered = dist.sort().values
        threshold = float(ordered[int(max_activation_rate * len(ordered))])  # fewer than k+1 values lie below it
        if not threshold > 0:
            raise InvalidEditError("the calibration prompts contain duplicates of stored keys; use unrelated prompts")
        field = "unnamed_threshold" if self.keys.needs_subject else "threshold"
        with self._writing():
            self.config = self.config.replace(**{field: threshold})
            if self.store is not None:  # only this field: the store's other fields (and others' changes) stay
                self.store.update_manifest({"config": {**self.store.manifest["config"], field: threshold}})
        return threshold

    # -- editing -----------------------------------------------------------------------------------------------------
    def edit(self, prompt: str | list[str], target: str, *, subject: str | None = None,
             supersedes: str | None = None, new_fact: bool = False, progress=None) -> Edit:
        """Teach the model to answer `prompt` (or each of several prompts: one LoRA, one key per prompt) with
        `target`, followed by the end of the answer. Returns the committed `Edit`.

        An edit of a fact that is already edited is an update: it supersedes the answering edit of that fact (whose
        keys then lead here, and whose prompts this edit also learns to answer with `target`; rolling this edit back
        brings that one back exactly). Which edits count as the same fact is `EditConfig.supersede`'s rule;
        `supersedes=ID` names the edit to update, `new_fact=True` keeps both.

        If training does not reproduce the target within `max_steps`, `EditConfig.on_no_converge` decides: "refuse"
        (the default) stores nothing and raises `NotConvergedError`; "commit" stores it with `converged=False`."""
        started = time.perf_counter()
        request = self._checked(prompt, target, subject, supersedes, new_fact)
        with self._writing():
            (edit, stored), = self._train_and_commit([self._planned(request)], started, progress)
        if not stored:
            raise NotConvergedError(_not_converged([edit], self.config), committed=[], failed=[(0, edit)])
        return edit

    def _checked(self, prompt, target, subject, supersedes, new_fact) -> dict[str, Any]:
        """Validate one edit request (nothing is computed or changed); -> its normalised fields."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise InvalidEditError("an edit needs at least one prompt")
        encoded = [self._encode(check_text(p, "prompt")) for p in prompts]
        target = check_text(target, "target").strip()  # zsRE has targets like " MAT-49"; the answer is "MAT-49"
        if subject is not None:
            check_text(subject, "subject")
        targets = [self.task.encode_target(p, target) for p in prompts]
        for enc, tgt in zip(encoded, targets):
            self.task.check_length(enc, tgt)
            check_token_limits(enc, len(tgt) - 1)  # the end-of-answer token is not the user's
        if self.keys.needs_subject and subject is not None:
            for p in prompts:
                if not _names(p, subject):
                    raise InvalidEditError(f"the subject {subject!r} does not occur in the prompt {p!r}; key='subject' "
                                           "needs it written in every prompt (as whole words)")
        if supersedes is not None and new_fact:
            raise InvalidEditError("pass either supersedes=ID (an update) or new_fact=True, not both")
        return {"prompts": prompts, "encoded": encoded, "target": target, "targets": targets, "subject": subject,
                "supersedes": supersedes, "new_fact": new_fact}

    def _planned(self, request: dict[str, Any]) -> dict[str, Any]:
        """Keys, the edit it supersedes (against the committed edits) and its training rows."""
        if request["supersedes"] is not None:
            self._check_supersedable(request["supersedes"])
        encoded, target = request["encoded"], request["target"]
        keys = self._edit_keys(encoded, request["subject"])
        older = request["supersedes"] if request["supersedes"] is not None or request["new_fact"] \
            else self._same_fact(encoded, keys, request["subject"])
        training, targets = list(encoded), list(request["targets"])
        for context in PREFIX_CONTEXTS[:self.config.prefix_contexts]:
            for prompt in request["prompts"]:
                training.append(self._encode(f"{context} {prompt}"))
                targets.append(self.task.encode_target(f"{context} {prompt}", target))
        if older is not None:  # the wordings of the fact edited before lead here too: teach them the new answer
            for text in dict.fromkeys(p for e in self.ledger.chain(older) for p in e.prompts if p not in request["prompts"]):
                training.append(self._encode(text))
                targets.append(self.task.encode_target(text, target))
        return {**request, "keys": keys, "older": older, "training": training, "training_targets": targets}

    def _train_and_commit(self, plans: list[dict[str, Any]], started: float,
                          progress=None) -> list[tuple[Edit, bool]]:
        """Train the planned edits together (one slot each, see `train_edits`) and commit them in order; -> each edit
        and whether it was stored (an edit that did not converge is not, under on_no_converge="refuse"). Called with
        the store's lock held, so the ids it trains with are the ids it commits under (the seed follows the id)."""
        first = id_number(self.store.next_id()) if self.store is not None else self._counter + 1
        numbers = [first + i for i in range(len(plans))]
        generators = [torch.Generator().manual_seed(zlib.crc32(f"{self.config.seed}:{n}".encode())) for n in numbers]
        rows = [(k, enc, tgt) for k, plan in enumerate(plans)
                for enc, tgt in zip(plan["training"], plan["training_targets"])]
        batch = self.task.batch([enc for _, enc, _ in rows], [tgt for _, _, tgt in rows])
        results = train_edits(self.task, self.decision, self.layers, batch,
                              torch.tensor([k for k, _, _ in rows], dtype=torch.long), self.config, generators, progress)
        seconds = round((time.perf_counter() - started) / len(plans), 3)  # a batch's wall time, shared out
        out = []
        for plan, result in zip(plans, results):
            store = result.converged or self.config.on_no_converge == "commit"
            number = first + sum(1 for _, stored in out if stored)
            record = Edit(id=f"e{number}" if store else "", prompts=tuple(plan["prompts"]), target=plan["target"],
                          subject=plan["subject"], created=_now(), steps=result.steps, loss=round(result.loss, 6),
                          converged=result.converged, seconds=seconds, supersedes=plan["older"])
            out.append((self._commit(record, plan["keys"], result.factors) if store else record, store))
        return out

    def _check_supersedable(self, edit_id: str) -> None:
        self.ledger.check_supersedable(edit_id)

    def _same_fact(self, prompts: list[EncodedPrompt], keys: torch.Tensor, subject: str | None) -> str | None:
        """The answering edit a new edit with these prompts and keys updates under `config.supersede`, if any."""
        if self.config.supersede == "never" or len(self.table) == 0:
            return None
        if self.keys.needs_subject:
            dist, slots = self._nearest_texts([p.text for p in prompts])
        else:  # the keys are the prompts' routing queries, each computed alone, as at inference
            found = [self.table.nearest(k.unsqueeze(0)) for k in keys]
            dist, slots = torch.cat([d for d, _ in found]), torch.cat([s for _, s in found])
        best = int(dist.argmin())
        distance, slot = float(dist[best]), int(slots[best])
        if slot < 0 or not distance < self.config.resolved_threshold():
            return None
        found = self.ledger.get(self._owner[slot])
        if subject is not None and found.subject is not None:
            same = _same_subject(subject, found.subject) and self._same_question(prompts, subject, found, distance)
        else:
            same = distance < self.config.resolved_supersede_threshold()
        return self._owner[int(self._answering(slots[best:best + 1])[0])] if same else None

    def _same_question(self, prompts: list[EncodedPrompt], subject: str, found: Edit, distance: float) -> bool:
        """Whether prompts about `subject` ask what `found` (an edit of the same subject) asks: their questions with
        the subject masked out are near in the sentence encoder's space. Keys read inside the model have no encoder:
        only a near-identical prompt counts."""
        bound = self.config.resolved_relation_threshold()
        if bound is None or not hasattr(self.keys, "encode"):
            return distance < self.config.resolved_supersede_threshold()
        ours = [relation_text(p.text, subject) for p in prompts]
        theirs = [relation_text(p, found.subject) for p in found.prompts]
        vectors = torch.nn.functional.normalize(self.keys.encode(ours + theirs).float(), dim=-1)
        nearest = 1.0 - (vectors[:len(ours)] @ vectors[len(ours):].T).max()
        return float(nearest) < bound

    def import_edit(self, edit: Edit, tensors: dict[str, torch.Tensor]) -> Edit:
        """Add an edit trained elsewhere on the same base model, layers and rank (e.g. read from another store with
        `Store.read_tensors`): its LoRA factors are used as they are, its keys are computed by this editor's key
        strategy from its prompts. Returns the edit under a new id of this editor.

        A SoLA edit's LoRA depends only on its own prompts, target and number, never on the other edits or on how
        inputs are routed, so importing edits in order into an editor with another key strategy gives exactly the
        editor that editing from scratch would give (this is how `sola bench --reuse-adapters` compares keys)."""
        factors = []
        for name, layer in zip(self.config.layers, self.layers):
            A, B = tensors.get(f"{name}.lora_A"), tensors.get(f"{name}.lora_B")
            if A is None or B is None or tuple(A.shape) != tuple(layer.lora_A.shape[1:]) \
                    or tuple(B.shape) != tuple(layer.lora_B.shape[1:]):
                raise InvalidEditError(f"the imported edit {edit.id} has no LoRA of the right shape for {name}; import "
                                       "only edits made on the same model with the same layers and rank")
            factors.append((A, B))
        encoded = [self._encode(check_text(p, "prompt")) for p in edit.prompts]
        keys = self._edit_keys(encoded, edit.subject)
        with self._writing():
            number = id_number(self.store.next_id()) if self.store is not None else self._counter + 1
            record = Edit.from_dict({**edit.to_dict(), "id": f"e{number}", "created": _now(), "rolled_back": None,
                                     "superseded_by": None, "supersedes": self._same_fact(encoded, keys, edit.subject)})
            return self._commit(record, keys, factors)

    def _edit_keys(self, prompts: list[EncodedPrompt], subject: str | None) -> torch.Tensor:
        if self.keys.needs_subject and subject is not None:
            return self.keys.relation([p.text for p in prompts], [subject] * len(prompts))
        return self._queries(prompts)  # key="subject" without a subject: the whole prompt, as key="encoder"

    def _commit(self, record: Edit, keys: torch.Tensor, factors: list[tuple[torch.Tensor, torch.Tensor]]) -> Edit:
        tensors = {"keys": keys.to(torch.float32)}
        for name, (A, B) in zip(self.config.layers, factors):  # imported factors are rounded here
            tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"] = A.to(self._kept), B.to(self._kept)
        if self.store is not None:  # durable first: if this fails, memory is unchanged
            self.store.commit_edit(record.to_dict(), tensors)
        else:
            self._counter = id_number(record.id)
        self._install(record.id, tensors, record.subject, durable=self.store is not None)
        self.ledger.add(record)
        if record.supersedes is not None:
            self._link(record.supersedes, record.id)
        return record

    def edit_many(self, requests: Iterable[dict[str, Any]], progress: bool = False, *, batch_size: int = 16,
                  skip_committed: bool = False, on_result: Callable[[int, Edit, str], None] | None = None
                  ) -> list[Edit]:
        """Make many edits, `batch_size` of them trained together in one batch (each its own LoRA; the same result as
        editing them one by one, up to rounding, and several times faster). Each request is a dict with `prompt` and
        `target` (EasyEdit's `target_new`, zsRE's `src`/`alt` are accepted), optionally `subject`, `prompts` (a list)
        instead of one prompt, `supersedes` or `new_fact` (see `edit`). Returns one `Edit` per request, in order.

        Every request is checked before anything is trained: a bad one raises (its message names the request counted
        from 1; the error's `request_index` counts from 0) and nothing is edited. Edits commit in request order, one batch at a time (each batch
        holds the store's lock while it trains and commits); a request about the same fact as one in the current
        batch waits for that batch to commit, so updates within a file chain as they would one by one.

        `skip_committed`: a request that a live edit was already made from (same prompts, target and subject) is
        not made again; its place in the result holds that edit. Re-running an interrupted file so neither retrains
        nor duplicates. `on_result(index, edit, status)` is called as each request is settled, status "committed",
        "skipped" or "refused" (did not converge under on_no_converge="refuse"; its edit has no id). Refused requests
        do not stop the others; at the end they raise `NotConvergedError`, which holds what was committed."""
        checked = []
        for index, raw in enumerate(requests):
            request = parse_request(raw, index)
            try:
                checked.append(self._checked(request["prompt"], request["target"], request["subject"],
                                             request["supersedes"], request["new_fact"]))
            except (InvalidEditError, UnknownEditError) as error:
                raise at_request(error, index) from None
        with self._writing():  # what other processes committed counts for `supersedes` too
            for index, request in enumerate(checked):
                if request["supersedes"] is not None:
                    try:
                        self._check_supersedable(request["supersedes"])
                    except (InvalidEditError, UnknownEditError) as error:
                        raise at_request(error, index) from None
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
                with self._writing():
                    started, pending = time.perf_counter(), []
                    while index < len(checked) and len(pending) < max(1, batch_size):
                        request = checked[index]
                        done = self.ledger.committed_as(request["prompts"], request["target"], request["subject"]) \
                            if skip_committed else None
                        if done is not None:
                            settle(index, done, "skipped")
                            index += 1
                            continue
                        try:
                            plan = self._planned(request)
                        except (InvalidEditError, UnknownEditError) as error:
                            raise at_request(error, index) from None
                        if pending and (self._overlaps(plan, [p for _, p in pending])
                                        or (skip_committed and any(_same_request(plan, p) for _, p in pending))):
                            break  # it must see the pending ones committed first
                        pending.append((index, plan))
                        index += 1
                    if pending:
                        made = self._train_and_commit([p for _, p in pending], started)
                        for (at, _), (edit, stored) in zip(pending, made):
                            settle(at, edit, "committed" if stored else "refused")
        finally:
            if bar is not None:
                bar.close()
        if refused:
            committed = [e for n, e in enumerate(results) if e is not None and n not in dict(refused)]
            raise NotConvergedError(_not_converged([e for _, e in refused], self.config, [n for n, _ in refused]),
                                    committed=committed, failed=refused)
        return results

    def _overlaps(self, plan: dict[str, Any], pending: list[dict[str, Any]]) -> bool:
        """Could `plan` be about the same fact as a pending edit (so it must see that edit committed first)?"""
        if plan["new_fact"] or (self.config.supersede == "never" and plan["supersedes"] is None):
            return False
        subject = plan["subject"]
        if subject is not None and any(p["subject"] is not None and _same_subject(subject, p["subject"])
                                       for p in pending):
            return True
        table = KeyTable(plan["keys"].shape[1], self.config.resolved_distance())
        for p in pending:
            table.add(p["keys"], slot=0)
        return bool((table.nearest(plan["keys"])[0] < self.config.resolved_threshold()).any())

    def rollback(self, edit_id: str) -> Edit:
        """Remove an edit: its keys leave the routing table and its slot is freed. Afterwards every input computes what
        it would have computed had the edit never been made."""
        with self._writing():  # a rollback made elsewhere meanwhile counts
            edit = self.ledger.get(edit_id) if edit_id in self.ledger else None
            if edit is None or not edit.live:
                state = "was already rolled back" if edit is not None else "does not exist"
                live = ", ".join(list(self._slot_of)[:10]) or "none"
                raise UnknownEditError(f"edit {edit_id!r} {state}; live edits: {live} (see `sola list`)")
            at = _now()
            if self.store is not None:
                self.store.commit_rollback(edit_id, at)
            return self._forget(edit_id, at)

    def _forget(self, edit_id: str, at: str, note: str | None = None) -> Edit:
        """Take a live edit out of memory (its rollback is committed already, here or by another process)."""
        slot = self._slot_of[edit_id]
        older, newer = self.ledger.rollback(edit_id, at, note)
        if older is not None and newer is None:  # the answering edit of a chain: `older` answers again
            self._answer[self._answer == slot] = self._slot_of[older]
        del self._slot_of[edit_id], self._owner[slot]
        self.table.remove_slot(slot)
        self.subjects.remove(slot)
        self._unnamed.discard(slot)
        self.residency.drop(slot)
        self._free.append(slot)
        return self.ledger.get(edit_id)

    def chain(self, edit_id: str) -> list[Edit]:
        """The live edits of `edit_id`'s fact, oldest first; the last one answers."""
        self._maybe_refresh()
        return self.ledger.chain(edit_id)

    def edits(self, include_rolled_back: bool = False) -> list[Edit]:
        """The edits in the order they were made (only live ones unless asked)."""
        self._maybe_refresh()
        return self.ledger.edits(include_rolled_back)

    def get(self, edit_id: str) -> Edit:
        self._maybe_refresh()
        return self.ledger.get(edit_id)

    # -- persistence and reporting -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the live edits to a new store directory (the store this editor works in is always saved already)."""
        path = Path(path)
        if self.store is not None and path.resolve() == self.store.path.resolve():
            return path
        store = Store.create(path, self._manifest())
        for edit in self.edits():
            store.commit_edit(edit.to_dict(), self._tensors_of(edit.id))
        return path

    def info(self) -> dict[str, Any]:
        self._maybe_refresh()
        lora_bytes = sum(layer.lora_A.nbytes + layer.lora_B.nbytes for layer in self.layers)
        key_bytes = self.table.keys.nbytes
        return {
            "model": self.source,
            "model_note": EMBEDDED_NOTE if self.source == EMBEDDED_SOURCE else None,
            "method": METHOD,
            "task": self.task.kind,
            "prompt_format": self.format.kind,
            "layers": self.config.layers,
            "rank": self.config.rank,
            "key": self.config.key,
            "distance": self.config.resolved_distance(),
            "threshold": self.config.default_threshold(),
            "unnamed_threshold": self.config.resolved_unnamed_threshold() if self.config.key == "subject" else None,
            "edits": len(self._slot_of),
            "superseded": self.ledger.superseded_count,
            "rolled_back": len(self.ledger) - self.ledger.live_count,
            "supersede": self.config.supersede,
            "keys": len(self.table),
            "slots": self.layers[0].capacity,
            "resident_edits": self.residency.resident,
            "resident_capacity": self.residency.capacity,
            "memory_bytes": {"lora": lora_bytes, "keys": key_bytes},
            "store": str(self.store.path) if self.store is not None else None,
        }


def _names(text: str, subject: str) -> bool:
    index = SubjectIndex()
    index.add(subject, 0)
    return bool(index.find(text))


def _same_subject(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def _same_request(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a["prompts"], a["target"], a["subject"]) == (b["prompts"], b["target"], b["subject"])


def _not_converged(edits: list[Edit], config: EditConfig, indices: list[int] | None = None) -> str:
    shown = "; ".join(f"{f'request {i + 1}: ' if indices else ''}{e.prompt!r} -> {e.target!r} (loss {e.loss:.3f} "
                      f"after {e.steps} steps)" for i, e in zip(indices or [0] * len(edits), edits[:5]))
    more = f"; and {len(edits) - 5} more" if len(edits) > 5 else ""
    return (f"{len(edits)} edit{'s' if len(edits) > 1 else ''} did not converge and {'were' if len(edits) > 1 else 'was'}"
            f" not stored: {shown}{more}. Training stopped at max_steps={config.max_steps} before the model reproduced"
            f" the target with a loss under {config.loss_bound}. Allow more steps (EditConfig(max_steps=...), `sola "
            "edit --max-steps N`), shorten the target, or store it anyway (EditConfig(on_no_converge='commit'), "
            "`--keep-unconverged`)")


def _store_config(store: Store, given: EditConfig | None, path) -> EditConfig:
    """The config an editor on an existing store uses: the store's, with this editor's training fields."""
    stored = EditConfig.from_dict({**STORED_DEFAULTS, **store.manifest["config"]})
    if given is None:
        return stored
    asked, held = given.to_dict(), stored.to_dict()
    resolvable = (None, "auto")  # fields a config leaves for the model to decide take the store's value
    differing = sorted(k for k, v in asked.items()
                       if v not in resolvable and v != held[k] and k not in EditConfig.TRAINING_FIELDS)
    if differing:
        raise ConfigError(f"the store {path} was made with a different config ({', '.join(differing)}); "
                          "open it without a config (it keeps its own) or create a new store")
    return stored.replace(**{k: asked[k] for k in EditConfig.TRAINING_FIELDS})
