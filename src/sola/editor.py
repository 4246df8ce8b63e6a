"""The Editor: edit a model's facts one at a time, route every input to at most one edit, roll any edit back exactly."""

from __future__ import annotations

import os
import time
import zlib
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from .asking import Asking
from .architectures import default_layers, default_rank, task_of
from .config import PREFIX_CONTEXTS, STORED_DEFAULTS, EditConfig
from .edit import Edit, EditLog
from .errors import ConfigError, InvalidEditError, ModelMismatchError, StoreError, UnknownEditError
from .fingerprint import config_hash, describe_mismatch, weights_hash
from .loading import EMBEDDED_NOTE, EMBEDDED_SOURCE, load_model
from .nn import Decision, RoutedLoraLayer
from .prompts import EncodedPrompt, PromptFormat, check_text
from .routing import KeyTable, Route, key_strategy
from .routing.subjects import SubjectIndex, relation_text
from .residency import Residency
from .store import Store
from .tasks import TASKS, Batch
from .training import train_edits

METHOD = "sola"
# Edits whose LoRA factors an editor with a store keeps in memory; the others are read back from the store when an
# input is routed to them (~1 ms each). 1,024 edits of the embedded model's default layers take ~100 MB.
DEFAULT_RESIDENT_EDITS = 1024


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
                 store: Store | None = None, resident_edits: int | None = DEFAULT_RESIDENT_EDITS) -> None:
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
        self._edits = EditLog()  # every edit, live or rolled back, in creation order
        self._slot_of: dict[str, int] = {}  # live edits only
        self._owner: dict[int, str] = {}  # the inverse of _slot_of, for routing answers
        # Superseding: a key keeps the slot of the edit whose prompt made it; `_answer[slot]` is the slot that answers
        # for that edit's keys (itself, or the newest live edit of its fact). Links run between live edits.
        self._answer = torch.zeros(0, dtype=torch.long)
        self._successor: dict[str, str] = {}
        self._predecessor: dict[str, str] = {}
        self._free: list[int] = []
        self._counter = 0
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
                        store: str | os.PathLike | None = None,
                        resident_edits: int | None = DEFAULT_RESIDENT_EDITS) -> "Editor":
        """Load a base model (None: the embedded SmolLM2-135M-Instruct; else a local Hugging Face directory or a hub id
        in the local cache) and, if `store` is given, open that store or create it. An existing store keeps the config
        it was made with; passing a different `config` for it is an error."""
        existing = store is not None and Store.exists(store)
        opened = Store.open(store) if existing else None
        if opened is not None:
            stored = EditConfig.from_dict({**STORED_DEFAULTS, **opened.manifest["config"]})
            given = config.to_dict() if config is not None else {}
            held = stored.to_dict()
            resolvable = (None, "auto")  # fields a config leaves for the model to decide take the store's value
            differing = sorted(k for k, v in given.items() if v not in resolvable and v != held[k])
            if differing:
                raise ConfigError(f"the store {store} was made with a different config ({', '.join(differing)}); "
                                  "open it without a config (it keeps its own) or create a new store")
            config = stored
        name, network, tokenizer = load_model(model)
        editor = cls(network, tokenizer, config, source=name, resident_edits=resident_edits)
        if opened is not None:
            editor._attach(opened)
        elif store is not None:
            editor._attach(Store.create(store, editor._manifest()))
        return editor

    @classmethod
    def load(cls, path: str | os.PathLike, model: str | os.PathLike | None = None, *,
             resident_edits: int | None = DEFAULT_RESIDENT_EDITS) -> "Editor":
        """Open a saved store with the base model it was made on (or `model`, which must be the same model)."""
        manifest = Store.read_manifest(path)
        source = model if model is not None else manifest["model"]["name"]
        if model is None and source != EMBEDDED_SOURCE and not Path(source).exists():
            raise StoreError(f"the store {path} was made on {source!r}, which is not here; pass model=... with a copy "
                             "of that model")
        return cls.from_pretrained(source, store=path, resident_edits=resident_edits)

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

    def _attach(self, store: Store) -> None:
        """Check that the store belongs to this model, then replay its journal into memory."""
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
        rolled = {r["id"]: r.get("at", "") for r in records if r["op"] == "rollback"}
        made = [r for r in records if r["op"] == "edit"]
        live = [r for r in made if r["id"] not in rolled]
        # read what is needed before changing anything: every live edit's keys, and the factors of the newest edits
        # that fit in memory (the others are read when an input is routed to them)
        capacity = self.residency.capacity
        resident = live if capacity is None else live[len(live) - capacity:] if capacity < len(live) else live
        ids = [r["id"] for r in live]
        factors = {r["id"]: store.read_tensors(r["id"]) for r in resident}
        keys, counts = store.read_keys_many(ids)
        assert not self._edits, "a store is attached to a new editor only"
        # the records become Edits when asked for; superseded_by is worked out again below, from the links
        self._edits.add_records(
            r if r["id"] not in rolled and r.get("rolled_back") is None and r.get("superseded_by") is None
            else {**r, "rolled_back": rolled.get(r["id"]), "superseded_by": None} for r in made)
        self._counter = max((_id_number(r["id"]) for r in made), default=0)
        slots = list(range(len(live)))  # a new editor: live edits take the slots 0..n-1 in creation order
        self._slot_of, self._owner = dict(zip(ids, slots)), dict(zip(slots, ids))
        self._answer = torch.arange(max(8, len(live)))
        if self.keys.needs_subject:
            for record, slot in zip(live, slots):
                self._add_subject(record.get("subject"), slot)
        for slot in range(len(live) - len(resident), len(live)):
            self.residency.put(slot, factors[ids[slot]], durable=True)
        self.table.add_rows(keys, torch.repeat_interleave(torch.arange(len(live)), counts))
        links = [(older, r["id"]) for r in live if (older := self._live_predecessor(r.get("supersedes"))) is not None]
        self._link_all(links)  # in creation order, as they were made
        store.forget_index()  # the routing table holds the keys now
        self.store = store

    def _live_predecessor(self, older: str | None) -> str | None:
        """The live edit an edit that recorded `supersedes=older` supersedes: `older`, or, if that was rolled back,
        what that one superseded."""
        while older is not None and not self._edits[older].live:
            older = self._edits[older].supersedes
        return older

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
        self._note_link(older, newer)

    def _link_all(self, links: list[tuple[str, str]]) -> None:
        """`_link` of each (older, newer) in order, on a table where every key still answers for itself (opening a
        store): who answers for whom is worked out first and written to `_answer` once."""
        answered: dict[int, list[int]] = {}  # answering slot -> the slots whose keys it answers for
        for older, newer in links:
            into, moved = self._slot_of[newer], self._slot_of[older]
            answered.setdefault(into, [into]).extend(answered.pop(moved, [moved]))
            self._note_link(older, newer)
        for slot, slots in answered.items():
            self._answer[torch.tensor(slots)] = slot

    def _note_link(self, older: str, newer: str) -> None:
        self._successor[older], self._predecessor[newer] = newer, older
        self._edits[older] = Edit.from_dict({**self._edits[older].to_dict(), "superseded_by": newer})

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
        found = self.nearest(prompt)
        return found if found is not None and found.distance < self.config.resolved_threshold() else None

    def nearest(self, prompt: str) -> Route | None:
        """The nearest live edit and its distance, whether or not it is under the threshold (None without edits)."""
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
            return dists * self.config.unnamed_scale(), slots
        dists, slots = torch.full((len(texts),), float("inf")), torch.full((len(texts),), -1, dtype=torch.long)
        unnamed = sorted(self._unnamed)
        whole = self.keys.encode(texts) if unnamed else None  # the queries key="encoder" would route by
        for row, text in enumerate(texts):
            found = [self.table.nearest_among(self.keys.relation([text], [subject])[0], candidates)
                     for subject, candidates in self.subjects.find(text).items()]
            if unnamed:
                distance, slot = self.table.nearest_among(whole[row], unnamed)
                found.append((distance * self.config.unnamed_scale(), slot))
            for distance, slot in found:
                if distance < dists[row]:
                    dists[row], slots[row] = distance, slot
        return dists, slots

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
        self.config = self.config.replace(**{field: threshold})
        if self.store is not None:
            self.store.update_manifest({"config": self.config.to_dict()})
        return threshold

    # -- editing -----------------------------------------------------------------------------------------------------
    def edit(self, prompt: str | list[str], target: str, *, subject: str | None = None,
             supersedes: str | None = None, new_fact: bool = False, progress=None) -> Edit:
        """Teach the model to answer `prompt` (or each of several prompts: one LoRA, one key per prompt) with
        `target`, followed by the end of the answer. Returns the committed `Edit`.

        An edit of a fact that is already edited is an update: it supersedes the answering edit of that fact (whose
        keys then lead here, and whose prompts this edit also learns to answer with `target`; rolling this edit back
        brings that one back exactly). Which edits count as the same fact is `EditConfig.supersede`'s rule;
        `supersedes=ID` names the edit to update, `new_fact=True` keeps both."""
        started = time.perf_counter()
        request = self._checked(prompt, target, subject, supersedes, new_fact)
        return self._train_and_commit([self._planned(request)], started, progress)[0]

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
            for text in dict.fromkeys(p for e in self.chain(older) for p in e.prompts if p not in request["prompts"]):
                training.append(self._encode(text))
                targets.append(self.task.encode_target(text, target))
        return {**request, "keys": keys, "older": older, "training": training, "training_targets": targets}

    def _train_and_commit(self, plans: list[dict[str, Any]], started: float, progress=None) -> list[Edit]:
        """Train the planned edits together (one slot each, see `train_edits`) and commit them in order."""
        numbers = [self._counter + 1 + i for i in range(len(plans))]
        generators = [torch.Generator().manual_seed(zlib.crc32(f"{self.config.seed}:{n}".encode())) for n in numbers]
        rows = [(k, enc, tgt) for k, plan in enumerate(plans)
                for enc, tgt in zip(plan["training"], plan["training_targets"])]
        batch = self.task.batch([enc for _, enc, _ in rows], [tgt for _, _, tgt in rows])
        results = train_edits(self.task, self.decision, self.layers, batch,
                              torch.tensor([k for k, _, _ in rows], dtype=torch.long), self.config, generators, progress)
        seconds = round((time.perf_counter() - started) / len(plans), 3)  # a batch's wall time, shared out
        committed = []
        for number, plan, result in zip(numbers, plans, results):
            record = Edit(id=f"e{number}", prompts=tuple(plan["prompts"]), target=plan["target"],
                          subject=plan["subject"], created=_now(), steps=result.steps, loss=round(result.loss, 6),
                          converged=result.converged, seconds=seconds, supersedes=plan["older"])
            committed.append(self._commit(record, plan["keys"], result.factors))
        return committed

    def _check_supersedable(self, edit_id: str) -> None:
        edit = self._edits.get(edit_id)
        if edit is None or not edit.live:
            state = "was rolled back" if edit is not None else "does not exist"
            raise UnknownEditError(f"supersedes={edit_id!r}: that edit {state}; name a live edit (see `sola list`)")
        if edit.superseded_by is not None:
            raise InvalidEditError(f"supersedes={edit_id!r}: that edit is already superseded by {edit.superseded_by}; "
                                   f"pass supersedes={edit.superseded_by!r}, the edit that answers for that fact now")

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
        found = self._edits[self._owner[slot]]
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
        record = Edit.from_dict({**edit.to_dict(), "id": f"e{self._counter + 1}", "created": _now(), "rolled_back": None,
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
        self._counter = _id_number(record.id)
        self._install(record.id, tensors, record.subject, durable=self.store is not None)
        self._edits[record.id] = record
        if record.supersedes is not None:
            self._link(record.supersedes, record.id)
        return record

    def edit_many(self, requests: Iterable[dict[str, Any]], progress: bool = False, *,
                  batch_size: int = 16) -> list[Edit]:
        """Make many edits, `batch_size` of them trained together in one batch (each its own LoRA; the same result as
        editing them one by one, up to rounding, and several times faster). Each request is a dict with `prompt` and
        `target` (EasyEdit's `target_new`, zsRE's `src`/`alt` are accepted), optionally `subject`, `prompts` (a list)
        instead of one prompt, `supersedes` or `new_fact` (see `edit`).

        Every request is checked before anything is trained: a bad one raises and nothing is edited. Edits commit in
        request order; a request about the same fact as one in the current batch waits for that batch to commit, so
        updates within a file chain as they would one by one."""
        checked = []
        for index, raw in enumerate(requests):
            request = _normalise_request(raw, index)
            try:
                checked.append(self._checked(request["prompt"], request["target"], request["subject"],
                                             request["supersedes"], request["new_fact"]))
                if request["supersedes"] is not None:
                    self._check_supersedable(request["supersedes"])
            except (InvalidEditError, UnknownEditError) as error:
                raise type(error)(f"request {index}: {error}") from None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(checked), unit="edit", desc="editing")
        done: list[Edit] = []
        pending: list[dict[str, Any]] = []
        started = time.perf_counter()

        def flush() -> None:
            nonlocal started
            if pending:
                done.extend(self._train_and_commit(pending, started))
                if bar is not None:
                    bar.update(len(pending))
                pending.clear()
                started = time.perf_counter()

        try:
            for request in checked:
                plan = self._planned(request)
                if pending and self._overlaps(plan, pending):
                    flush()
                    plan = self._planned(request)  # decide again against what just committed
                pending.append(plan)
                if len(pending) >= max(1, batch_size):
                    flush()
            flush()
        finally:
            if bar is not None:
                bar.close()
        return done

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
        edit = self._edits.get(edit_id)
        if edit is None or not edit.live:
            state = "was already rolled back" if edit is not None else "does not exist"
            live = ", ".join(list(self._slot_of)[:10]) or "none"
            raise UnknownEditError(f"edit {edit_id!r} {state}; live edits: {live} (see `sola list`)")
        at = _now()
        if self.store is not None:
            self.store.commit_rollback(edit_id, at)
        older, newer = self._predecessor.pop(edit_id, None), self._successor.pop(edit_id, None)
        slot = self._slot_of[edit_id]
        if newer is not None:
            del self._predecessor[newer]
        if older is not None:
            del self._successor[older]
            if newer is not None:  # `newer` answered for this edit's keys; with them gone it supersedes `older`
                self._link(older, newer)
            else:  # the answering edit of a chain: `older` answers again
                self._answer[self._answer == slot] = self._slot_of[older]
                self._edits[older] = Edit.from_dict({**self._edits[older].to_dict(), "superseded_by": None})
        del self._slot_of[edit_id], self._owner[slot]
        self.table.remove_slot(slot)
        self.subjects.remove(slot)
        self._unnamed.discard(slot)
        self.residency.drop(slot)
        self._free.append(slot)
        self._edits[edit_id] = rolled = Edit.from_dict({**edit.to_dict(), "rolled_back": at, "superseded_by": None})
        return rolled

    def chain(self, edit_id: str) -> list[Edit]:
        """The live edits of `edit_id`'s fact, oldest first; the last one answers."""
        edit = self.get(edit_id)
        if not edit.live:
            return [edit]
        while edit.id in self._predecessor:
            edit = self._edits[self._predecessor[edit.id]]
        found = [edit]
        while found[-1].id in self._successor:
            found.append(self._edits[self._successor[found[-1].id]])
        return found

    def edits(self, include_rolled_back: bool = False) -> list[Edit]:
        """The edits in the order they were made (only live ones unless asked)."""
        return [e for e in self._edits.values() if include_rolled_back or e.live]

    def get(self, edit_id: str) -> Edit:
        if edit_id not in self._edits:
            raise UnknownEditError(f"edit {edit_id!r} does not exist (see `sola list`)")
        return self._edits[edit_id]

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
            "edits": len(self._slot_of),
            "superseded": len(self._successor),
            "rolled_back": sum(1 for e in self._edits.values() if not e.live),
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


def _id_number(edit_id: str) -> int:
    try:
        return int(edit_id.lstrip("e"))
    except ValueError:
        return 0


_PROMPT_FIELDS = ("prompt", "src", "question")
_TARGET_FIELDS = ("target", "target_new", "alt", "answer")


def _normalise_request(request: Any, index: int) -> dict[str, Any]:
    if not isinstance(request, dict):
        raise InvalidEditError(f"request {index} must be a dict with 'prompt' and 'target', got {type(request).__name__}")
    prompt = next((request[f] for f in ("prompts", *_PROMPT_FIELDS) if f in request), None)
    target = next((request[f] for f in _TARGET_FIELDS if f in request), None)
    if isinstance(target, dict):  # EasyEdit sometimes nests {"str": ...}
        target = target.get("str")
    if prompt is None or target is None:
        raise InvalidEditError(f"request {index} needs a prompt ({'/'.join(_PROMPT_FIELDS)}) and a target "
                               f"({'/'.join(_TARGET_FIELDS)}); it has {sorted(request)}")
    return {"prompt": prompt, "target": target, "subject": request.get("subject"),
            "supersedes": request.get("supersedes"), "new_fact": bool(request.get("new_fact", False))}
