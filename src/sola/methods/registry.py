"""Every editing method by name, in one place: what `sola bench --method` and the library accept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import Record
from ..errors import ConfigError
from .base import EditorMethod, MethodRoute
from .elder import ElderEditor, ElderOnlineEditor
from .grace import GraceEditor
from .lora_ft import LoraFTEditor
from .melo import MeloEditor
from .snapshot import SnapshotEditor

BASELINES: dict[str, type[SnapshotEditor]] = {"elder": ElderEditor, "elder-online": ElderOnlineEditor,
                                              "grace": GraceEditor, "melo": MeloEditor, "lora-ft": LoraFTEditor}
METHODS = ("sola", *BASELINES)


def bench_naming(method: str):
    """What names a registered method's bench runs (`bench_label`, `bench_name_parts`): SoLA's bench adapter, or the
    baseline's editor class."""
    if method == "sola":
        from .sola import SolaMethod

        return SolaMethod
    if method not in BASELINES:
        raise ConfigError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    return BASELINES[method]


class SnapshotMethod(EditorMethod):
    """A baseline editor as an `EditingMethod`. Its state is saved to `store` every `save_every` edits and by
    `finish()`; a resumed benchmark continues from the last saved edit. The bench may read the locality probes no
    edit reaches from the base run where the editor declares `unrouted_is_base` (pinned in tests/test_baselines.py)."""

    resumes_from_snapshot = True

    def __init__(self, editor: SnapshotEditor, store: Path, save_every: int = 10) -> None:
        self.editor, self.store, self.save_every = editor, store, save_every
        self.name = editor.method

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

