"""Routing on long passages (the hallucination task, issue 25), measured without training: every WISE edit passage
becomes an edit with an all-zero LoRA (`Editor.import_edit`: routing does not depend on the factors), then four
kinds of input are routed:

- the edit passages themselves (should reach their own edit: Rel's routing);
- never-edited passages of the same biographies (WISE's other file, about an edited person: should reach none);
- never-edited passages of other biographies (about a person no edit is about: should reach none);
- upstream web text (WISE's `locality_prompt`: should reach none).

For each key strategy and a grid of thresholds: the share of each kind routed (to its own edit, for the first).
With --supersede KEY=THRESHOLD,...: the edits are also imported in order under supersede="auto", and the edits it
takes for an update of an earlier one are counted (each correction is a separate fact, so every one is a mistake).
Run: .venv/bin/python benchmarks/passage_routing.py --keys subject,encoder,last_token --out results/passage_routing.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch


def zero_factors(editor) -> dict:
    """All-zero LoRA factors for an imported edit (routing does not read them)."""
    return {f"{name}.{part}": torch.zeros(getattr(layer, part).shape[1:], dtype=getattr(layer, part).dtype)
            for name, layer in zip(editor.config.layers, editor.layers) for part in ("lora_A", "lora_B")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--edits", type=int, default=600)
    parser.add_argument("--keys", default="subject,encoder,last_token,mean_pool")
    parser.add_argument("--supersede", default="",
                        help="KEY=THRESHOLD,...: also import the edits in order under supersede='auto' with that key "
                             "and threshold, and count the edits taken for an update of an earlier one")
    parser.add_argument("--out", default="results/passage_routing.json")
    args = parser.parse_args()

    from sola import EditConfig, Editor
    from sola.data import load_dataset
    from sola.data.probes import normalise
    from sola.edit import Edit

    edits = load_dataset("hallucination", args.data).records[: args.edits]
    extra = load_dataset("hallucination-extra", args.data).records
    edited = {normalise(r.subject or "") for r in edits}
    kinds = {
        "edit_passages": [r.prompt for r in edits],
        "same_biography": [r.prompt for r in extra if normalise(r.subject or "") in edited],
        "other_biography": [r.prompt for r in extra if normalise(r.subject or "") not in edited],
        "upstream": [r.locality[0].prompt for r in edits if r.locality],
    }
    result = {"machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
              "model": "embedded SmolLM2-135M-Instruct", "counts": {k: len(v) for k, v in kinds.items()},
              "keys": {}}
    for key in filter(None, args.keys.split(",")):
        editor = Editor.from_pretrained(config=EditConfig(key=key, prompt_format="raw", supersede="never"))
        zeros = zero_factors(editor)
        ids = []
        for n, record in enumerate(edits):
            ids.append(editor.import_edit(Edit(id=f"x{n}", prompts=(record.prompt,), target=record.target,
                                               subject=record.subject), zeros).id)
        found = {kind: [editor.nearest(p) for p in prompts] for kind, prompts in kinds.items()}
        distances = [r.distance for rs in found.values() for r in rs if r is not None]
        # fixed points (a passage is a near-exact match of its own key) plus quantiles of what was seen
        grid = sorted({editor.config.resolved_threshold(), 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, *torch.quantile(
            torch.tensor(distances), torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8])).tolist()})
        rows = {}
        for threshold in grid:
            row = {}
            for kind, routes in found.items():
                if kind == "edit_passages":
                    row["own_edit"] = sum(1 for r, i in zip(routes, ids) if r is not None and r.edit_id == i
                                          and r.distance < threshold) / len(routes)
                else:
                    row[f"{kind}_activated"] = sum(1 for r in routes if r is not None and r.distance < threshold) \
                        / max(1, len(routes))
            rows[f"{threshold:.4f}"] = row
        gated = {kind: sum(1 for r in routes if r is None) / max(1, len(routes)) for kind, routes in found.items()}
        result["keys"][key] = {"default_threshold": editor.config.resolved_threshold(), "no_candidate": gated,
                               "by_threshold": rows}
        print(key, json.dumps(result["keys"][key], indent=1))
    for setting in filter(None, args.supersede.split(",")):
        key, threshold = setting.split("=")
        editor = Editor.from_pretrained(config=EditConfig(key=key, threshold=float(threshold), prompt_format="raw",
                                                          supersede="auto"))
        zeros = zero_factors(editor)
        made = [editor.import_edit(Edit(id=f"x{n}", prompts=(r.prompt,), target=r.target, subject=r.subject), zeros)
                for n, r in enumerate(edits)]
        subject_of = {e.id: normalise(r.subject or "") for e, r in zip(made, edits)}
        updates = [e for e in made if e.supersedes]
        result.setdefault("supersede_auto", {})[setting] = {
            "edits": len(made), "taken_for_updates": len(updates),
            "of_the_same_person": sum(1 for e in updates if subject_of[e.supersedes] == subject_of[e.id]),
            "live_after": sum(1 for e in editor.edits() if e.superseded_by is None)}
        print("supersede auto", setting, json.dumps(result["supersede_auto"][setting]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
