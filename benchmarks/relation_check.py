"""The relation check of key="subject" (`sola.routing.relations`), measured on routing alone: which rephrases reach
their own edit and which same-subject / same-relation probes open one, with the question bank and without it, for
relations the bank has and for relations taken out of it.

Every record of the slice is an edit (key: its prompt's clause with the subject masked; the data's subject given).
Queries are the bench's own probes (`sola.eval.items.build_items`). A query is compared only with the edits whose
subject it names (the subject gate), and among those by one rule:

- `threshold`: the masked clauses' MiniLM distance under the threshold alone (relation_check="none", before);
- `bank`: the library's check (`RelationCheck.weigh`: extra keys from the edit's bank relation, and the query must be
  nearer to the edit than RIVAL_RATIO times its distance to every form of another relation), under the threshold;
  variants vary the ratio, the extra keys, the radius that gives an edit its relation, and an added margin instead
  of a ratio (dropped, see docs/evaluation.md);
- `held out`: the same, with the bank relation nearest to the edit's prompt taken out of the bank for that edit
  (`RelationCheck.without`): the bank has never seen the relation asked.

The default rule's figures are computed twice: vectorised here and by `RelationCheck.weigh` pair by pair; the script
stops if they differ. Tune on CounterFact records 1,000 and on (`--start 1000`); the benchmark reads 0-999.

Run: .venv/bin/python benchmarks/relation_check.py --dataset counterfact --start 1000 --records 1000 \
        --out docs/runs/experiments/relation-check-counterfact-1000-1999.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="counterfact")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    started = time.perf_counter()

    from sola.config import DEFAULT_THRESHOLDS
    from sola.data import Dataset, load_dataset
    from sola.data.probes import normalise, rephrase_form
    from sola.eval.items import build_items, nq_pool
    from sola.eval.spec import BenchSpec
    from sola.routing import relations as rel
    from sola.routing.keys import SubjectRelationKeys
    from sola.routing.subjects import SubjectIndex, relation_text

    full = load_dataset(args.dataset)
    dataset = Dataset(full.name, full.kind, full.records[args.start:args.start + args.records], full.path, full.notes)
    items = build_items(dataset, nq_pool(BenchSpec(method="sola", dataset=args.dataset)), seed=0, subject_count=2)
    records = [item.record for item in items]
    index = SubjectIndex()
    for slot, record in enumerate(records):
        index.add(record.subject, slot)

    queries = []  # (kind, record number, text)
    for i, item in enumerate(items):
        form = rephrase_form(item.record) if args.dataset == "counterfact" else None
        queries += [("rephrase" if form in (None, "prefixed") else "plain_rephrase", i, t)
                    for t in item.record.rephrases]
        queries += [(kind, i, p.prompt) for kind in ("subject", "relation") for p in item.probes[kind]]
    pairs = [(q, slot, relation_text(text, subject)) for q, (_, _, text) in enumerate(queries)
             for subject, slots in index.find(text).items() for slot in slots]
    edit_texts = [relation_text(r.prompt, r.subject) for r in records]
    texts = sorted({t for _, _, t in pairs} | set(edit_texts))
    position = {t: n for n, t in enumerate(texts)}

    encoder = SubjectRelationKeys(None)
    vectors = torch.cat([encoder.encode(texts[i:i + 128]) for i in range(0, len(texts), 128)]).float()
    check = rel.RelationCheck(encoder.encode)
    forms, form_relation = check.vectors, check.bank.relation_of_form
    relations = len(check.bank.names)
    query = vectors[torch.tensor([position[t] for _, _, t in pairs])]  # (pairs, d)
    edit = vectors[torch.tensor([position[edit_texts[s]] for _, s, _ in pairs])]
    plain = 1 - (query * edit).sum(-1)

    def by_relation(distances: torch.Tensor) -> torch.Tensor:  # (pairs, forms) -> (pairs, relations), nearest form
        out = torch.full((len(distances), relations), float("inf"))
        return out.scatter_reduce(1, form_relation.expand(len(distances), -1), distances, reduce="amin")

    query_forms = 1 - query @ forms.T
    query_rel, edit_rel = by_relation(query_forms), by_relation(1 - edit @ forms.T)
    nearest_rel = edit_rel.argmin(1)
    targets = [normalise(r.target) for r in records]
    kinds = sorted({k for k, _, _ in queries})
    threshold = DEFAULT_THRESHOLDS["subject"]

    def figures(admitted: torch.Tensor, distance: torch.Tensor) -> dict:
        best: dict[int, tuple[float, int]] = {}
        for (q, slot, _), ok, d in zip(pairs, admitted.tolist(), distance.tolist()):
            if ok and (q not in best or (d, slot) < best[q]):
                best[q] = (d, slot)
        out = {}
        for kind in kinds:
            members = [q for q, (k, _, _) in enumerate(queries) if k == kind]
            if "rephrase" in kind:  # reached: routed to an edit with this record's target
                hit = sum(1 for q in members if q in best and targets[best[q][1]] == targets[queries[q][1]])
                out[f"{kind}_reached"] = round(hit / len(members), 4)
            else:
                out[f"{kind}_activated"] = round(sum(1 for q in members if q in best) / len(members), 4)
        return out

    def bank_rule(ratio=rel.RIVAL_RATIO, radius=rel.MATCH_RADIUS, extra=True, margin=None, held_out=False):
        matched = edit_rel.gather(1, nearest_rel[:, None])[:, 0] < radius  # the edit has a bank relation
        own = torch.zeros(len(pairs), relations, dtype=torch.bool)
        own[torch.arange(len(pairs)), nearest_rel] = matched
        if held_out:  # the relation nearest to the edit was never in the bank: no extra keys, not a rival either
            rivals = query_rel.masked_fill(torch.nn.functional.one_hot(nearest_rel, relations).bool(), float("inf"))
            distance = plain
        else:
            rivals = query_rel.masked_fill(own, float("inf"))
            own_distance = query_rel.masked_fill(~own, float("inf")).min(1).values.clamp(min=0)
            distance = torch.minimum(plain, own_distance) if extra else plain
        rival = rivals.min(1).values
        passes = distance < (rival + margin if margin is not None else ratio * rival)
        return passes & (distance < threshold), distance

    rules = [{"rule": "threshold alone", "threshold": t, **figures(plain < t, plain)} for t in (0.5, 0.6, 0.7)]
    default_admitted, default_distance = bank_rule()
    rules.append({"rule": "bank (default)", "ratio": rel.RIVAL_RATIO, "radius": rel.MATCH_RADIUS, "extra_keys": True,
                  **figures(default_admitted, default_distance)})
    for ratio in (1.0, 1.2, 1.5, 2.0):
        rules.append({"rule": "bank", "ratio": ratio, **figures(*bank_rule(ratio=ratio))})
    for radius in (0.2, 0.4):
        rules.append({"rule": "bank", "radius": radius, **figures(*bank_rule(radius=radius))})
    rules.append({"rule": "bank, no extra keys", **figures(*bank_rule(extra=False))})
    for margin in (0.05, 0.15):
        rules.append({"rule": "bank, added margin instead of ratio", "margin": margin,
                      **figures(*bank_rule(margin=margin))})
    for ratio in (1.0, rel.RIVAL_RATIO, 1.5, 2.0):
        rules.append({"rule": "held out (edit's relation not in the bank)", "ratio": ratio,
                      **figures(*bank_rule(ratio=ratio, held_out=True))})

    # the library, pair by pair, on the default rule
    profiles = {slot: check.profile(vectors[position[edit_texts[slot]]][None]) for slot in {s for _, s, _ in pairs}}
    library = [check.weigh(q, float(d), profiles[slot]) for q, d, (_, slot, _) in zip(query, plain, pairs)]
    admitted = torch.tensor([v.rival is None and v.distance < threshold for v in library])
    disagree = int((admitted != default_admitted).sum())
    if disagree:
        raise SystemExit(f"the vectorised default rule and RelationCheck.weigh disagree on {disagree} pairs")

    summary = {"dataset": args.dataset, "records": [args.start, args.start + len(records)],
               "queries": {k: sum(1 for q in queries if q[0] == k) for k in kinds}, "pairs_under_gate": len(pairs),
               "encoder": "all-MiniLM-L6-v2", "bank": {"relations": relations, "forms": len(forms)},
               "threshold": threshold, "seconds": round(time.perf_counter() - started, 1), "rules": rules}
    for rule in rules:
        print(json.dumps(rule))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
