"""A separate process that edits one store (the other side of tests/test_concurrency.py): `python store_worker.py
MODEL STORE NAME COUNT [rollback]`. It prints one JSON line per edit it was told is committed (and per rollback), as
soon as the call returns, so a parent that kills it knows what it was promised."""

from __future__ import annotations

import json
import sys

from sola import EditConfig, Editor


def main() -> None:
    model, store, name, count = sys.argv[1:5]
    rollback = len(sys.argv) > 5 and sys.argv[5] == "rollback"
    config = EditConfig(key="mean_pool", prompt_format="raw", learning_rate=0.05, max_steps=200, threshold=1e-3,
                        on_no_converge="commit")
    editor = Editor.from_pretrained(model, config=config, store=store, lock_wait=120)
    print(json.dumps({"ready": True}), flush=True)
    for i in range(int(count)):
        prompt, target = f"Who founded {name} number {i}?", f"{name} {i}"
        edit = editor.edit(prompt, target, new_fact=True)
        print(json.dumps({"id": edit.id, "prompt": prompt, "target": target}), flush=True)
        if rollback and i % 2 == 1:
            editor.rollback(edit.id)
            print(json.dumps({"rolled_back": edit.id}), flush=True)


if __name__ == "__main__":
    main()
