"""The PEFT round trip on the embedded model: edit zsRE facts, export each as a PEFT adapter, load it with the real
`peft` library onto the base model, and compare logits with the editor's for the edit's prompt and target.

    python benchmarks/peft_roundtrip.py [--edits 5] [--out docs/runs/experiments/peft-roundtrip.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    import peft

    from sola import EditConfig, Editor
    from sola.data import load_zsre
    from sola.loading import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    editor = Editor.from_pretrained(config=EditConfig(prompt_format="raw"))
    records = load_zsre().records[:args.edits]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for record in records:
            edit = editor.edit(record.prompt, record.target)
            directory = editor.export_peft(edit.id, Path(tmp) / edit.id)
            target = editor.task.encode_target(record.prompt, record.target)
            ids = editor.encode(record.prompt).ids + target
            with torch.no_grad():
                ours = editor.logits(record.prompt, record.target)
            _, base, _ = load_model(None)
            started = time.perf_counter()
            model = peft.PeftModel.from_pretrained(base, str(directory)).eval()
            load_s = time.perf_counter() - started
            with torch.no_grad():
                theirs = model(input_ids=torch.tensor([ids])).logits[0]
            predicted = theirs[len(ids) - len(target) - 1:-1].argmax(-1).tolist()
            rows.append({"edit": edit.id, "max_abs_logit_diff": float((ours - theirs).abs().max()),
                         "max_abs_logit": float(ours.abs().max()), "peft_reproduces_target": predicted == target,
                         "editor_generates_target": editor.generate(record.prompt) == record.target,
                         "peft_load_s": round(load_s, 3)})
            print(json.dumps(rows[-1]))
    report = {"model": "embedded SmolLM2-135M-Instruct (float32)", "peft": peft.__version__, "rows": rows,
              "max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in rows)}
    print(f"max |editor - peft| over {len(rows)} edits: {report['max_abs_logit_diff']:.2e}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
