"""Why an ELDER store forgets: for every live edit of a saved ELDER / elder-online store, whether its own prompt still
reaches the mixture (routing), whether the routers still choose the edit's preset allocation (top-k per layer), and
whether the prompt still generates the target, both as routed and with the edit's allocation forced on every layer.
Summarised by the edit's age (how many edits came after it).

Run: .venv/bin/python benchmarks/elder_forgetting.py RUN_DIR/store --out results/elder_forgetting.json
(a store of `sola bench --method elder-online ...`; the model is the store's own).
"""

from __future__ import annotations

import argparse
import json
import platform
from contextlib import contextmanager
from pathlib import Path

import torch


@contextmanager
def allocation_forced(editor, allocation: torch.Tensor):
    """Within: every routed input uses `allocation` (L, k) as its top-k on every layer, with the routers' own scores
    as weights; which inputs defer is unchanged."""
    routed = editor.mixture_weights

    def weights(queries, deferral):
        used, _ = routed(queries, deferral)
        scores = editor._scores(queries)
        top = allocation.unsqueeze(0).expand(queries.shape[0], -1, -1)
        forced = scores * torch.zeros_like(scores).scatter(-1, top, 1.0)
        return forced * (used.sum((1, 2)) > 0).view(-1, 1, 1).to(forced.dtype), top

    editor.mixture_weights = weights
    try:
        yield
    finally:
        del editor.mixture_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--buckets", type=int, default=5, help="age groups in the summary")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--out", default="results/elder_forgetting.json")
    args = parser.parse_args()

    from sola.data.probes import normalise
    from sola.methods import BASELINES
    from sola.methods.snapshot import MANIFEST

    method = json.loads((Path(args.store) / MANIFEST).read_text()).get("method")
    if method not in ("elder", "elder-online"):
        raise SystemExit(f"{args.store} holds a {method!r} snapshot; give the store of an elder or elder-online run")
    editor = BASELINES[method].load(args.store)
    live = [edit for edit in editor.edits() if edit.id in editor.codes]
    rows = []
    for age, edit in zip(range(len(live) - 1, -1, -1), live):
        prompt = edit.prompts[0]
        top = editor.mixture_weights(editor.queries_of([editor.encode(prompt)]), False)[1][0]
        allocation = editor.allocations[edit.id]
        route = editor.route(prompt)
        answer = editor.generate(prompt, args.max_new_tokens)
        with allocation_forced(editor, allocation):
            forced = editor.generate(prompt, args.max_new_tokens)
        rows.append({"id": edit.id, "age": age, "routed_to_own_edit": route is not None and route.edit_id == edit.id,
                     "layers_on_allocation": int((top == allocation).all(-1).sum()), "layers": len(allocation),
                     "exact": normalise(answer) == normalise(edit.target),
                     "exact_with_allocation_forced": normalise(forced) == normalise(edit.target)})

    def share(group, field):
        return round(sum(bool(r[field]) for r in group) / len(group), 3) if group else None

    size = -(-len(rows) // args.buckets)
    youngest_first = sorted(rows, key=lambda r: r["age"])
    summary = []
    for start in range(0, len(rows), size):
        group = youngest_first[start:start + size]
        summary.append({"ages": [group[0]["age"], group[-1]["age"]], "edits": len(group),
                        "routed_to_own_edit": share(group, "routed_to_own_edit"),
                        "top_k_is_allocation": round(sum(r["layers_on_allocation"] == r["layers"] for r in group)
                                                     / len(group), 3),
                        "layers_on_allocation_mean": round(sum(r["layers_on_allocation"] for r in group)
                                                           / len(group), 2),
                        "exact": share(group, "exact"),
                        "exact_with_allocation_forced": share(group, "exact_with_allocation_forced")})
    result = {"store": str(args.store), "method": method, "edits": len(rows),
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()},
              "all": {"routed_to_own_edit": share(rows, "routed_to_own_edit"), "exact": share(rows, "exact"),
                      "exact_with_allocation_forced": share(rows, "exact_with_allocation_forced")},
              "by_age": summary, "rows": rows}
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
