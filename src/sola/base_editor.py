"""What every editor shares, SoLA's `Editor` and the snapshot editors of the other methods (`sola.methods`): a frozen
base model and its prompt format, a ledger of edits, switching every edit off, and finding the model a store was
made on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from .asking import Asking
from .edit import Edit
from .errors import EditorClosedError, StoreError
from .ledger import Ledger
from .loading import EMBEDDED_SOURCE
from .nn.injection import Attachments
from .prompts import EncodedPrompt, PromptFormat


class BaseEditor(Asking):
    """The surface every editing method offers: `edits`, `get`, `chain`, `disabled` (plus `generate`, `score` and
    `logits` from `Asking`). A method declares what it can promise in three class attributes (the method protocol,
    `sola.methods.base`, reads them):

        method            its registry name ("sola", "elder", ...), also written into its store
        exact_rollback    `rollback` restores exactly the state before the edit (else it raises
                          `RollbackNotSupportedError`, changing nothing)
        unrouted_is_base  an input no edit is routed to computes the untouched base model, bit for bit
    """

    method = ""
    exact_rollback = False
    unrouted_is_base = False

    def _hold(self, model: nn.Module, tokenizer, source: str, prompt_format: str) -> None:
        """Take the base model (frozen, in eval mode) and start an empty ledger."""
        self.model, self.tokenizer, self.source = model, tokenizer, source
        self.attachments = Attachments(model)  # before anything changes the model: `close()` goes back to here
        model.eval().requires_grad_(False)
        self.format = PromptFormat(tokenizer, prompt_format)
        self.ledger = Ledger()
        self._disabled = self._closed = False

    def encode(self, prompt: str) -> EncodedPrompt:
        """The prompt as this editor's model reads it (prompt format applied); a prompt too long for the model is an
        `InvalidEditError`."""
        encoded = self.format.encode(prompt)
        self.task.check_length(encoded)
        return encoded

    def close(self) -> None:
        """Take this editor off its model: every layer it wrapped goes back and every hook it registered is removed,
        and the model's train/eval modes and `requires_grad` flags are as they were when it was handed over. The
        model then computes exactly what it computed before; the store (if any) is untouched. A closed editor
        neither answers nor edits (`EditorClosedError`). `with Editor.from_pretrained(...) as editor:` closes it
        on leaving the block."""
        self.attachments.remove()
        self._closed = True

    def __enter__(self) -> BaseEditor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise EditorClosedError(f"this {self.method} editor was closed: `close()` took it off its model; make "
                                    "a new one (Editor.from_pretrained(...) or Editor.load(path))")

    def _before_asking(self) -> None:
        self._check_open()

    @contextmanager
    def disabled(self) -> Iterator[BaseEditor]:
        """Inside, every input runs the base model (no edit is routed): `with editor.disabled(): editor.generate(p)`
        gives the unedited model's answer, bit for bit, without touching the edits."""
        previous, self._disabled = self._disabled, True
        try:
            yield self
        finally:
            self._disabled = previous

    # -- the edits ---------------------------------------------------------------------------------------------------
    def edits(self, include_rolled_back: bool = False) -> list[Edit]:
        """The edits in the order they were made (only live ones unless asked)."""
        self._before_asking()
        return self.ledger.edits(include_rolled_back)

    def get(self, edit_id: str) -> Edit:
        self._before_asking()
        return self.ledger.get(edit_id)

    def chain(self, edit_id: str) -> list[Edit]:
        """The live edits of `edit_id`'s fact, oldest first; the last one answers."""
        self._before_asking()
        return self.ledger.chain(edit_id)

    def live_edit(self, edit_id: str) -> Edit:
        """The live edit `edit_id`; anything else (unknown, rolled back) is the `UnknownEditError` a rollback of it
        would raise, naming the live edits."""
        return self.ledger.live_edit(edit_id)


def stored_model(manifest: dict[str, Any], path) -> str:
    """The base model a store or snapshot was made on, if it is here."""
    source = manifest["model"]["name"]
    if source != EMBEDDED_SOURCE and not Path(source).exists():
        raise StoreError(f"the store {path} was made on {source!r}, which is not here; pass model=... with a copy of "
                         "that model")
    return source
