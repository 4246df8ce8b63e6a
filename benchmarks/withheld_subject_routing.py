"""Routing with the subject withheld, measured without training: how much of the given-subject routing survives when
every edit's subject is read from its prompt (`infer_subject`), with and without `EditConfig.mask_shared_words`.

Every record of the first N is an edit. Queries are the bench's own probes (`sola.eval.items.build_items`):
rephrases and same-relation / same-subject / unrelated probes. An input is compared only with the edits whose subject
it names (`SubjectIndex`), by MiniLM on the masked clauses, as the router does:

- `given`: the data's subject, plain masks (what `sola bench` does by default);
- `inferred`: the subject read from the prompt, plain masks (`mask_shared_words=False`);
- `inferred, shared words masked`: the subject read from the prompt, and the clauses of the input and of each
  candidate edit masked over the words around it they share (`shared_relation_texts`, the default).

A rephrase is reached when its nearest edit under the threshold has its record's target; a probe is activated when
any edit is under the threshold. Prints one line per variant, writes everything to --out.
Run: .venv/bin/python benchmarks/withheld_subject_routing.py --dataset zsre --records 1000 \
        --out docs/runs/experiments/withheld-subject-routing-zsre.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="zsre")
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--data", default=None, help="the data directory (default: $SOLA_DATA or ../shared/data)")
    parser.add_argument("--thresholds", default="0.5,0.6,0.7")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    started = time.perf_counter()

    from sola.data import load_dataset
    from sola.data.probes import normalise, rephrase_form
    from sola.eval.items import build_items, nq_pool
    from sola.eval.spec import BenchSpec
    from sola.routing.keys import SubjectRelationKeys
    from sola.routing.names import infer_subject
    from sola.routing.subjects import SubjectIndex, relation_text, shared_relation_texts

    dataset = load_dataset(args.dataset, args.data).head(args.records)
    spec = BenchSpec(method="sola", dataset=args.dataset, data=args.data)
    items = build_items(dataset, nq_pool(spec), seed=0, subject_count=1)
    records = [item.record for item in items]
    queries = []  # (kind, record index, text)
    for i, item in enumerate(items):
        queries += [("rephrase", i, text) for text in item.record.rephrases]
        for kind, probes in item.probes.items():
            queries += [(kind, i, p.prompt) for p in probes]
    counted = {kind: [q for q, (k, _, _) in enumerate(queries) if k == kind]
               for kind in ("rephrase", "unrelated", "relation", "subject")}
    if args.dataset == "counterfact":
        counted["rephrase_prefixed"] = [q for q in counted["rephrase"]
                                        if rephrase_form(records[queries[q][1]]) == "prefixed"]
    inferred = [infer_subject(r.prompt) for r in records]
    variants = {"given": ([r.subject for r in records], False), "inferred": (inferred, False),
                "inferred, shared words masked": (inferred, True)}

    encoder = SubjectRelationKeys(None)
    vectors: dict[str, torch.Tensor] = {}

    def encoded(texts: list[str]) -> torch.Tensor:
        new = [t for t in dict.fromkeys(texts) if t not in vectors]
        for start in range(0, len(new), 64):
            for text, vector in zip(new[start:start + 64], encoder.encode(new[start:start + 64])):
                vectors[text] = vector
        return torch.stack([vectors[t] for t in texts]) if texts else torch.zeros(0, 384)

    targets = [normalise(r.target) for r in records]
    thresholds = [float(t) for t in args.thresholds.split(",")]
    results = {}
    for name, (subjects, shared) in variants.items():
        index = SubjectIndex()
        for slot, subject in enumerate(subjects):
            if subject:
                index.add(subject, slot)
        pairs = []  # (query, slot, the edit's masked text, the query's masked text)
        for q, (_, _, text) in enumerate(queries):
            for form, slots in index.find(text).items():
                for slot in slots:
                    masks = shared_relation_texts(records[slot].prompt, subjects[slot], text, form) if shared else None
                    pairs.append((q, slot, *(masks or (relation_text(records[slot].prompt, subjects[slot]),
                                                       relation_text(text, form)))))
        ours, theirs = encoded([p[2] for p in pairs]), encoded([p[3] for p in pairs])
        distance = (1 - (ours * theirs).sum(-1)).tolist()
        row = {"subjects_like_the_data": sum(s == r.subject for s, r in zip(subjects, records)) / len(records),
               "pairs_under_gate": len(pairs)}
        for threshold in thresholds:
            best: dict[int, tuple[float, int]] = {}
            for (q, slot, _, _), d in zip(pairs, distance):
                if d < threshold and (q not in best or d < best[q][0]):
                    best[q] = (d, slot)
            figures = {}
            for kind, members in counted.items():
                if kind.startswith("rephrase"):
                    reached = sum(1 for q in members if q in best and targets[best[q][1]] == targets[queries[q][1]])
                    figures[f"{kind}_reached"] = round(reached / len(members), 4)
                else:
                    figures[f"{kind}_activated"] = round(sum(1 for q in members if q in best) / len(members), 4)
            row[str(threshold)] = figures
        results[name] = row
        print(name, json.dumps(row))
    summary = {"dataset": args.dataset, "records": len(records), "queries": {k: len(v) for k, v in counted.items()},
               "encoder": "all-MiniLM-L6-v2", "seconds": round(time.perf_counter() - started, 1),
               "variants": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
