"""The method a spec names, built (or, in a resumed run, reopened from the run's store) behind the method protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import STORED_DEFAULTS
from ..errors import ConfigError
from .spec import BenchSpec


def build_method(spec: BenchSpec, store_path: Path):
    from ..methods import BASELINES, METHODS

    if spec.method not in METHODS:
        raise ConfigError(f"unknown method {spec.method!r}; available: {', '.join(METHODS)}")
    if spec.method in BASELINES:
        return _build_baseline(spec, store_path, BASELINES[spec.method])
    from ..config import EditConfig
    from ..editor import Editor
    from ..methods import SolaMethod
    from ..store import Store

    # every record a new fact, as the papers evaluate; {"supersede": "auto"} in spec.config reads updates as updates.
    # Every edit of the stream is stored, converged or not: a failed edit counts against the method, as in the papers.
    config = EditConfig(prompt_format=spec.prompt_format, seed=spec.seed, supersede="never", on_no_converge="commit")
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
    return SolaMethod(editor, reuse=reuse)


def _build_baseline(spec: BenchSpec, store_path: Path, editor_class):
    from ..methods import SnapshotMethod

    if spec.key or spec.reuse_adapters:
        raise ConfigError(f"--key and --reuse-adapters are SoLA options; {spec.method} has its own routing")
    if editor_class.exists(store_path):
        return SnapshotMethod(editor_class.load(store_path, spec.model), store_path)
    fields: dict[str, Any] = {"prompt_format": spec.prompt_format, "seed": spec.seed}
    known = {f for f in editor_class.config_class.__dataclass_fields__}
    if spec.layers:
        fields.update({"layers": list(spec.layers)} if "layers" in known else {"layer": spec.layers[0]})
    if isinstance(spec.threshold, (int, float)):
        field = editor_class.config_class.threshold_field  # ELDER's is a Hamming distance (int), the others' radii
        if field is None:
            raise ConfigError(f"--threshold: {spec.method} does not route")
        fields[field] = editor_class.config_class.threshold_type(spec.threshold)
    config = editor_class.config_class.from_dict({**fields, **spec.config})
    return SnapshotMethod(editor_class.from_pretrained(spec.model, config=config), store_path)


_TRAINING_FIELDS = ("layers", "rank", "lora_alpha", "prompt_format", "optimizer", "learning_rate", "max_steps",
                    "loss_bound", "factor_dtype", "seed")


def _check_reusable(manifest: dict, editor) -> None:
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
