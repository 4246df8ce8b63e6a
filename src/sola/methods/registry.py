"""Every editing method by name, registered once: what the library, `sola bench` (building the method, naming its
runs, its `--help`) and the contract suite over all methods read.

A method module ends with one call, SoLA's like the others':

    register_method(Method(name="grace", editor=GraceEditor, config=GraceConfig, summary="...",
                           tiny=TinySettings(families=("llama", "gpt2"), config={"radius": 1e-3})))

`Method.bench` builds it for a bench run (default: the baselines' snapshot adapter, `SnapshotMethod.from_spec`);
`Method.naming` names its runs in result tables (default: the editor class's `bench_label`/`bench_name_parts`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .base import EditorMethod, MethodRoute

if TYPE_CHECKING:
    from ..data import Record
    from ..eval.spec import BenchSpec
    from .snapshot import SnapshotEditor


@dataclass(frozen=True)
class TinySettings:
    """How a method runs on the tiny random models of the contract suite (tests/test_method_contract.py): the model
    families it supports, its config fields there (radii and thresholds on such a model's scale), changes per family,
    and how many answer tokens its edit is expected to produce (None: the whole target)."""

    families: tuple[str, ...]
    config: Mapping[str, Any] = field(default_factory=dict)
    family_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    answer_tokens: int | None = None

    def config_for(self, family: str) -> dict[str, Any]:
        return {**self.config, **self.family_config.get(family, {})}


@dataclass(frozen=True)
class Method:
    """One editing method: its name, editor class (`from_pretrained(model, config=...)`, `load(path, model)`), config
    class, a one-line summary (`sola bench --help`), how a bench run builds it and names its runs, and its tiny-model
    settings."""

    name: str
    editor: type
    config: type
    summary: str
    tiny: TinySettings
    bench: Callable[[BenchSpec, Path, Method], Any] | None = None
    naming: Any = None

    def build(self, spec: BenchSpec, store_path: Path):
        """The method behind the bench protocol, for this spec (reopened from the run's store when resuming)."""
        return (self.bench or SnapshotMethod.from_spec)(spec, store_path, self)

    def bench_label(self, config: dict[str, Any], threshold) -> str:
        return (self.naming or self.editor).bench_label(config, threshold)

    def bench_name_parts(self, config: dict[str, Any]) -> list[str]:
        return (self.naming or self.editor).bench_name_parts(config)

    def tiny_config(self, family: str, **changes: Any):
        """Its config on a tiny random model of this family (`TinySettings`), with `changes`."""
        return self.config(**{**self.tiny.config_for(family), **changes})


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a method under its name (once: a second method of the same name is an error)."""
    if method.name in _REGISTRY and _REGISTRY[method.name] is not method:
        raise ConfigError(f"a method named {method.name!r} is registered already ({_REGISTRY[method.name].editor})")
    _REGISTRY[method.name] = method
    return method


def registered() -> dict[str, Method]:
    """Every registered method by name, in alphabetical order (the bundled ones register themselves when the
    `sola.methods` package is imported, which importing this module does first)."""
    return dict(sorted(_REGISTRY.items()))


def method(name: str) -> Method:
    """The method registered as `name`; `ConfigError` listing the others."""
    found = registered()
    if name not in found:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(found)}")
    return found[name]


class SnapshotMethod(EditorMethod):
    """A baseline editor as an `EditingMethod`. Its state is saved to `store` every `save_every` edits and by
    `finish()`; a resumed benchmark continues from the last saved edit. The bench may read the locality probes no
    edit reaches from the base run where the editor declares `unrouted_is_base` (pinned in tests/test_baselines.py)."""

    resumes_from_snapshot = True

    def __init__(self, editor: SnapshotEditor, store: Path, save_every: int = 10) -> None:
        self.editor, self.store, self.save_every = editor, store, save_every
        self.name = editor.method

    @classmethod
    def from_spec(cls, spec: BenchSpec, store_path: Path, method: Method) -> SnapshotMethod:
        editor_class = method.editor
        if spec.key or spec.reuse_adapters:
            raise ConfigError(f"--key and --reuse-adapters are SoLA options; {spec.method} has its own routing")
        if editor_class.exists(store_path):
            return cls(editor_class.load(store_path, spec.model), store_path)
        fields: dict[str, Any] = {"prompt_format": spec.prompt_format, "seed": spec.seed}
        known = set(editor_class.config_class.__dataclass_fields__)
        if spec.layers:
            fields.update({"layers": list(spec.layers)} if "layers" in known else {"layer": spec.layers[0]})
        if isinstance(spec.threshold, (int, float)):
            threshold = editor_class.config_class.threshold_field  # ELDER's is a Hamming distance (int)
            if threshold is None:
                raise ConfigError(f"--threshold: {spec.method} does not route")
            fields[threshold] = editor_class.config_class.threshold_type(spec.threshold)
        config = editor_class.config_class.from_dict({**fields, **spec.config})
        return cls(editor_class.from_pretrained(spec.model, config=config), store_path)

    @property
    def store_path(self) -> Path:
        return self.store

    def edit(self, record: Record) -> dict[str, Any]:
        edit = self.editor.edit(record.prompt, record.target, subject=record.subject)
        if len(self.editor.edits(include_rolled_back=True)) % self.save_every == 0:
            self.finish()
        return self._info(edit)

    def edit_batch(self, records: list[Record]) -> list[dict[str, Any]]:
        """The batch the method's own way (`edit_many`: MELO and ELDER train their shared modules on it together,
        the others edit in order), then the state is saved (a resumed run restarts the batch it stopped in)."""
        edits = self.editor.edit_many([{"prompt": r.prompt, "target": r.target, "subject": r.subject}
                                       for r in records])
        self.finish()
        return [self._info(edit) for edit in edits]

    def finish(self) -> None:
        self.editor.save(self.store)

    def routes(self, prompts: list[str]) -> list[MethodRoute] | None:
        found = [self.editor.locate(p) for p in prompts]
        if all(edit_id is None for edit_id, _, _ in found) and not self.editor.edits():
            return None
        return [MethodRoute(edit_id, distance, routed) for edit_id, distance, routed in found]
