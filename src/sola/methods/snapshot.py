"""What the baseline editors (GRACE, MELO, LoRA-FT) share: the public `Editor` surface on a causal LM, edit records,
and saving their whole state as one snapshot (safetensors + JSON).

SoLA's `Editor` keeps one immutable file per edit, because its edits never change after they are made. These methods
change shared state as edits arrive (a codebook's radii, a cluster's LoRA, one LoRA for everything), so their store is
a snapshot of that state, written atomically by `save`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..architectures import task_of
from ..base_editor import BaseEditor, stored_model
from ..edit import Edit, now
from ..errors import ConfigError, CorruptStoreError, InvalidEditError, StoreError
from ..files import atomic_write
from ..fingerprint import config_hash, describe_mismatch, weights_hash
from ..loading import load_model
from ..nn.injection import capture
from ..planning import check_texts
from ..prompts import EncodedPrompt
from ..routing import Route
from ..tasks import CausalTask

SNAPSHOT_FORMAT = 1
MANIFEST, STATE = "snapshot.json", "state.safetensors"


class RollbackNotSupportedError(InvalidEditError):
    """The method cannot remove this edit exactly (its training changed parameters that other edits share)."""


@dataclasses.dataclass
class BaselineConfig:
    """Fields every baseline shares; each method's config adds its own."""

    # the field `sola bench --threshold` sets (None: the method does not route), its type and its name in tables
    threshold_field: ClassVar[str | None] = None
    threshold_type: ClassVar[type] = float
    threshold_symbol: ClassVar[str] = "radius"

    prompt_format: str = "raw"
    optimizer: str = "adam"
    learning_rate: float = 0.04
    max_steps: int = 60
    loss_bound: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()  # a config that cannot work is an error where it is written

    def validate(self):
        if self.prompt_format not in ("auto", "raw", "chat"):
            raise ConfigError(f"prompt_format={self.prompt_format!r} is unknown; choose auto, raw or chat")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer={self.optimizer!r} is unknown; choose adam or sgd")
        if self.max_steps < 1 or self.learning_rate <= 0 or self.loss_bound <= 0:
            raise ConfigError("max_steps, learning_rate and loss_bound must be positive")
        radius = getattr(self, self.threshold_field) if self.threshold_type is float and self.threshold_field else None
        if radius is not None and not radius > 0:
            raise ConfigError(f"{self.threshold_field}={radius} must be positive")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config fields {unknown} for {cls.__name__}; known fields are {sorted(known)}")
        return cls(**data).validate()

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes).validate()


@dataclasses.dataclass
class FixedSchedule:
    """The training of a batch of edits in the runner MELO's and ELDER's authors used: a fresh Adam at
    `fixed_learning_rate`, exactly `fixed_steps` iterations on the whole batch, the lr multiplied by `fixed_lr_gamma`
    every `fixed_lr_step` iterations (MELO's `num_iter: 50`, `edit_lr: 1e-2`, `StepLR(20, 0.5)`)."""

    fixed_learning_rate: float = 1e-2
    fixed_steps: int = 50
    fixed_lr_step: int = 20
    fixed_lr_gamma: float = 0.5


def check_fixed_schedule(config: FixedSchedule) -> None:
    if config.fixed_steps < 1 or config.fixed_lr_step < 1 or not config.fixed_learning_rate > 0 \
            or not 0 < config.fixed_lr_gamma <= 1:
        raise ConfigError("fixed_steps and fixed_lr_step must be positive integers, fixed_learning_rate positive and "
                          "fixed_lr_gamma in (0, 1]")


class SnapshotEditor(BaseEditor):
    """Base of the baseline editors. Subclasses set `method` and `config_class` (and `exact_rollback`,
    `unrouted_is_base` where they hold: see `BaseEditor`) and implement `_build` (wrap the model's modules),
    `_train(encoded, targets, target)` -> (steps, loss, converged) which also commits the edit to the method's state,
    `_forget(edit_id)`, `_routed`, `locate`, `_state()`/`_restore(tensors)` and `_describe()`."""

    config_class = BaselineConfig
    rollback_note: str | None = None  # written into a rolled-back edit's record (ELDER: what its rollback leaves)

    def __init__(self, model: nn.Module, tokenizer, config=None, *, source: str = "model") -> None:
        config = (config or self.config_class()).validate()
        model_type = model.config.model_type
        if task_of(model_type) != "causal":
            raise ConfigError(f"{self.method} is implemented for causal language models (LLaMA, GPT-2, ...), not "
                              f"{model_type!r}; use the sola method for seq2seq and classifiers")
        self._hold(model, tokenizer, source, config.prompt_format)
        self.config = config.replace(prompt_format=self.format.kind)
        self.task = CausalTask(model, tokenizer, self.format)
        self._counter = 0
        self.path: Path | None = None
        wrapped = self._build()
        self.fingerprint = {"name": source, "config_hash": config_hash(model.config),
                            "weights_hash": weights_hash(wrapped), "keys": {"kind": self.method}}

    @classmethod
    def bench_label(cls, config: dict[str, Any], threshold) -> str:
        """How a bench run of this method (its config and threshold, as results.json holds them) is named in result
        tables (`sola.eval.study`; SoLA's runs are named by `sola.methods.SolaMethod`)."""
        if isinstance(threshold, (int, float)):
            return f"{cls.method} ({cls.config_class.threshold_symbol} {threshold:.3g})"
        return cls.method

    @classmethod
    def bench_name_parts(cls, config: dict[str, Any]) -> list[str]:
        """What a bench run's archive file is named by, after dataset and method (`sola.eval.study.archive`)."""
        return []

    # -- construction ------------------------------------------------------------------------------------------------
    def _build(self) -> list[nn.Module]:
        """Wrap the edited modules; return the base modules whose weights identify the model."""
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike | None = None, *, config=None):
        """Load a base model (None: the embedded SmolLM2-135M-Instruct) and wrap it for this method."""
        name, network, tokenizer = load_model(model)
        return cls(network, tokenizer, config, source=name)

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether `path` holds a snapshot (of any method)."""
        return (Path(path) / MANIFEST).is_file()

    @classmethod
    def load(cls, path: str | os.PathLike, model: str | os.PathLike | None = None):
        """Open a snapshot written by `save` with the model it was made on (or `model`, the same model)."""
        manifest, tensors = _read_snapshot(Path(path), cls.method)
        source = model if model is not None else stored_model(manifest, path)
        name, network, tokenizer = load_model(source)
        editor = cls(network, tokenizer, cls.config_class.from_dict(manifest["config"]), source=name)
        mismatch = describe_mismatch(manifest["model"], editor.fingerprint)
        if mismatch:
            from ..errors import ModelMismatchError

            raise ModelMismatchError(f"{path}: {mismatch}")
        editor.ledger.restore([Edit.from_dict(r) for r in manifest["edits"]])
        editor._counter = manifest["counter"]
        editor._restore(tensors)
        editor.path = Path(path)
        return editor

    def save(self, path: str | os.PathLike) -> Path:
        """Write the whole state to `path` (a new directory, or a snapshot of this method, which is replaced
        atomically: a crash leaves the old snapshot or the new one, never a mix)."""
        path = Path(path)
        if path.exists() and any(path.iterdir()) and not (path / MANIFEST).is_file():
            raise StoreError(f"cannot save to {path}: it exists and is not a {self.method} snapshot; choose a new "
                             "directory")
        staging = path.with_name(path.name + ".saving")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        tensors = {k: v.detach().contiguous() for k, v in self._state().items()}
        save_file(tensors, str(staging / STATE))
        manifest = {"format_version": SNAPSHOT_FORMAT, "method": self.method, "config": self.config.to_dict(),
                    "model": self.fingerprint, "counter": self._counter,
                    "edits": [e.to_dict() for e in self.ledger.edits(include_rolled_back=True)]}
        atomic_write(staging / MANIFEST, lambda t: t.write_text(json.dumps(manifest, indent=1, sort_keys=True)))
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        staging.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        self.path = path
        return path

    def _state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _restore(self, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    # -- editing -----------------------------------------------------------------------------------------------------
    def edit(self, prompt: str | list[str], target: str, *, subject: str | None = None) -> Edit:
        """Teach the model to answer `prompt` (or each of several prompts) with `target`. Returns the `Edit`."""
        self._check_open()
        started = time.perf_counter()
        return self._edit_checked(subject, *check_texts(self.encode, self.task, prompt, target, subject), started)

    def _edit_checked(self, subject, prompts, encoded, target, targets, started: float) -> Edit:
        """One edit whose texts `check_texts` passed: trained, committed to the state and recorded."""
        edit_id = f"e{self._counter + 1}"
        steps, loss, converged = self._train(edit_id, encoded, targets, target)
        self._counter += 1
        return self._record(edit_id, subject, prompts, target, (steps, loss, converged),
                            round(time.perf_counter() - started, 3))

    def _record(self, edit_id: str, subject, prompts, target: str, outcome: tuple[int, float, bool],
                seconds: float) -> Edit:
        steps, loss, converged = outcome
        record = Edit(id=edit_id, prompts=tuple(prompts), target=target, subject=subject, created=now(),
                      steps=steps, loss=round(loss, 6), converged=converged, seconds=seconds)
        self.ledger.add(record)
        return record

    def edit_many(self, requests: Iterable[dict[str, Any]]) -> list[Edit]:
        """Make a batch of edits that arrive together; one `Edit` per request, in order. Each request is a dict with
        `prompt` (or `prompts`) and `target`, optionally `subject` (the fields `Editor.edit_many` reads). Every
        request is checked before anything is trained: a bad one raises naming it (counted from 1) and nothing is
        edited. Methods that train shared modules on batches (MELO, ELDER: `trains_batches`) train them on the
        whole batch at once, as their authors ran them; the others make the edits in order. A batch of one is still a
        batch (it trains on the batch schedule). Each edit's `seconds` is its share of the batch's time."""
        self._check_open()
        from ..errors import SolaError, at_request
        from ..requests import parse_request

        started = time.perf_counter()
        checked = []
        for index, raw in enumerate(requests):
            request = parse_request(raw, index)
            try:
                checked.append((request["subject"], *check_texts(self.encode, self.task, request["prompt"],
                                                                 request["target"], request["subject"])))
            except SolaError as error:
                raise at_request(error, index) from None
        if not checked:
            return []
        if not self.trains_batches:
            return [self._edit_checked(*texts, time.perf_counter()) for texts in checked]
        ids = [f"e{self._counter + 1 + i}" for i in range(len(checked))]
        results = self._train_batch(ids, [(encoded, targets, target) for _, _, encoded, target, targets in checked])
        self._counter += len(checked)
        seconds = round((time.perf_counter() - started) / len(checked), 3)
        return [self._record(edit_id, subject, prompts, target, outcome, seconds)
                for edit_id, (subject, prompts, _, target, _), outcome in zip(ids, checked, results)]

    # True for methods whose `_train_batch` trains shared modules on a whole batch of edits together
    trains_batches: ClassVar[bool] = False

    def _train(self, edit_id: str, encoded: list[EncodedPrompt], targets: list[list[int]],
               target: str) -> tuple[int, float, bool]:
        raise NotImplementedError

    def _train_batch(self, edit_ids: list[str], edits: list[tuple[list[EncodedPrompt], list[list[int]], str]]
                     ) -> list[tuple[int, float, bool]]:
        """Train the batch's edits (each: encoded prompts, target ids per prompt, target) together and commit them
        to the method's state; -> (steps, loss, converged) per edit."""
        raise NotImplementedError

    def rollback(self, edit_id: str) -> Edit:
        """Remove an edit, where the method can do so exactly (see the method's docs); otherwise raise
        `RollbackNotSupportedError` and change nothing."""
        self._check_open()
        self.live_edit(edit_id)
        self._forget(edit_id)
        self.ledger.rollback(edit_id, now(), self.rollback_note)
        return self.ledger.get(edit_id)

    def _forget(self, edit_id: str) -> None:
        raise NotImplementedError

    # -- routing -----------------------------------------------------------------------------------------------------
    def _inputs_at(self, module: nn.Module, prompts: list[EncodedPrompt], pool, batch_size: int = 16) -> torch.Tensor:
        """`pool(hidden, mask)` of `module`'s input for each encoded prompt, (B, d), in batches of `batch_size`: the
        forward pass stops at `module` (MELO's keys, ELDER's queries)."""
        found = []
        for start in range(0, len(prompts), batch_size):
            batch = self.task.batch(prompts[start:start + batch_size], None)
            found.append(capture(module, lambda batch=batch: self.model(**batch.inputs, use_cache=False),
                                 lambda hidden, batch=batch: pool(hidden.detach().float(), batch.mask)))
        return torch.cat(found)

    def locate(self, prompt: str) -> tuple[str | None, float | None, bool]:
        """(the edit whose training answers for the nearest key, its distance, whether the prompt is routed there);
        (None, None, False) without edits or for methods without routing."""
        return None, None, False

    def nearest(self, prompt: str) -> Route | None:
        """The nearest edit and its distance, routed or not (None without routing)."""
        edit_id, distance, _ = self.locate(prompt)
        return Route(edit_id, distance) if edit_id is not None else None

    def route(self, prompt: str) -> Route | None:
        """The edit this prompt is routed to, or None if it runs on the base model (or the method does not route)."""
        edit_id, distance, routed = self.locate(prompt)
        return Route(edit_id, distance) if routed else None

    def calibrate_threshold(self, prompts: Iterable[str], max_activation_rate: float = 0.01, *,
                            against: Iterable[str] | None = None) -> float | None:
        """Set the method's radius so that at most `max_activation_rate` of these unrelated prompts fall within it
        of the keys of `against` (e.g. the edit prompts about to be made). None for methods without routing."""
        return None

    def _calibrated(self, queries: torch.Tensor, keys: torch.Tensor, rate: float) -> float:
        """The distance under which at most `rate` of `queries` lie from their nearest key (Euclidean)."""
        if len(queries) < 2 or not 0 <= rate < 1:
            raise InvalidEditError("calibration needs at least 2 prompts and 0 <= max_activation_rate < 1")
        dist = torch.cdist(queries.float(), keys.float(), compute_mode="donot_use_mm_for_euclid_dist").min(1).values
        value = float(dist.sort().values[int(rate * len(dist))])
        if not value > 0:
            raise InvalidEditError("the calibration prompts contain the edit prompts themselves; use unrelated prompts")
        return value

    # -- reporting ---------------------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {"model": self.source, "method": self.method, "task": self.task.kind,
                "prompt_format": self.format.kind, "edits": len(self.edits()),
                "rolled_back": len(self.ledger) - self.ledger.live_count,
                "exact_rollback": self.exact_rollback, "store": str(self.path) if self.path else None,
                **self._describe()}

    def _describe(self) -> dict[str, Any]:
        return {}


def _read_snapshot(path: Path, method: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise StoreError(f"{path} is not a snapshot ({MANIFEST} missing); write one with editor.save(path)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptStoreError(f"{manifest_path} is not valid JSON ({err}); restore it from a backup") from None
    if manifest.get("format_version") != SNAPSHOT_FORMAT:
        raise CorruptStoreError(f"{manifest_path}: unsupported format_version {manifest.get('format_version')!r}")
    if manifest.get("method") != method:
        raise StoreError(f"{path} holds a {manifest.get('method')!r} snapshot, not {method!r}; open it with that "
                         "method")
    try:
        tensors = load_file(path / STATE)
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptStoreError(f"{path / STATE} is not a readable safetensors file ({err})") from None
    return manifest, tensors


def generators_for(seed: int, edit_id: str) -> list[torch.Generator]:
    """The random generator of one edit: the same seed and edit id give the same initialisation."""
    import zlib

    return [torch.Generator().manual_seed(zlib.crc32(f"{seed}:{edit_id}".encode()))]
