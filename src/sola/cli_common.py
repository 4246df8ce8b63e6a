"""What the `sola` commands share: where the store is, opening it (an editor, or the journal alone without torch),
printing text or JSON, and the exit-code exception."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import SolaError


class Exit(Exception):
    """Leave the command with this exit code (sola.cli.main returns it)."""

    def __init__(self, code: int) -> None:
        self.code = code


def default_store() -> Path:
    from .home import sola_home

    return sola_home() / "stores" / "default"


def store_path(args) -> Path:
    return Path(args.store) if args.store else default_store()


def existing_store(args) -> Path:
    """The store a read-only command reads: it must exist (a typo must not create one)."""
    from .journal import MANIFEST

    path = store_path(args)
    if not (path / MANIFEST).is_file():
        raise SolaError(f"there is no store at {path}; check --store, or make one by editing into it "
                        f"(`sola edit --store {path} PROMPT TARGET`)")
    return path


def quiet_transformers() -> None:
    """No progress bars of transformers' own (ours are the ones that matter on a terminal)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def open_editor(args, *, create: bool):
    from .config import EditConfig
    from .editor import Editor
    from .store import Store

    store = store_path(args) if create else existing_store(args)
    quiet_transformers()
    config = EditConfig(key=args.key) if create and args.key and not Store.exists(store) else None
    editor = Editor.from_pretrained(args.model, store=store, config=config, create=create, lock_wait=args.wait,
                                    skip_damaged=getattr(args, "skip_damaged", False))
    training = {}
    if getattr(args, "max_steps", None) is not None:
        training["max_steps"] = args.max_steps
    if getattr(args, "keep_unconverged", False):
        training["on_no_converge"] = "commit"
    if training:  # training fields apply to this command's edits only; the store's config is unchanged
        editor.config = editor.config.replace(**training)
    return editor


def open_ledger(args):
    """(manifest, ledger, damage) of the store, without torch or the model: its journal replayed."""
    from .journal import read_journal
    from .ledger import Ledger

    manifest, records, damage = read_journal(existing_store(args), skip_damaged=getattr(args, "skip_damaged", False))
    ledger = Ledger()
    ledger.replay(records)
    return manifest, ledger, damage


def emit(args, data, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)
