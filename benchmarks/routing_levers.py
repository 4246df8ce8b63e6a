"""Routing levers for the subject key, measured without training: which rephrases reach their own edit and which
locality probes open one, under each candidate relation check.

Every record of the first N is an edit (key: its prompt's clause with the subject masked). Queries are the bench's own
probes (`sola.eval.items.build_items`: rephrases, same-relation / same-subject / unrelated probes) plus subject-alias
probes (`sola.data.aliases`). An input is compared only with the edits whose subject (or an alias form of it) it names,
and among those by one of the relation checks:

- `minilm`: all-MiniLM-L6-v2 on the masked clause (the library's check);
- `lm{L}`: the base model's hidden state at layer L at the last token of the masked clause (what kind of answer the
  clause asks for, read by the model that answers it);
- `two_stage`: `minilm` under a low threshold routes; between the low and the high one, the `lm{L}` check decides.
- `answer` (with `--answer`): the base model's next-token distribution at the end of the whole input (raw prompt, the
  subject named: the answer it would give) against the same at the end of the edit's prompt, as the squared
  Hellinger distance 1 - sum sqrt(p q): two wordings of one question should expect one kind of answer (often the same
  one), another relation of the subject another. Also as the second look of `two_stage answer` and as a conjunction
  (`minilm_and_answer`: both must pass).

Prints one line per rule and threshold, and writes everything to --out.
Run: .venv/bin/python benchmarks/routing_levers.py --dataset counterfact --records 1000 \
        --out docs/runs/experiments/routing-levers-counterfact.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def lm_features(model, tokenizer, texts: list[str], layers: list[int]) -> dict[int, torch.Tensor]:
    """{layer: (len(texts), d) unit vectors}: the hidden state at the last token of each text (raw prompt)."""
    out = {layer: [] for layer in layers}
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")
            hidden = model(**ids, output_hidden_states=True).hidden_states
            for layer in layers:
                out[layer].append(torch.nn.functional.normalize(hidden[layer][0, -1].float(), dim=-1))
    return {layer: torch.stack(v) for layer, v in out.items()}


def answer_distributions(model, tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """{text: (V,) float16 probabilities of the base model's next token at the end of the text (raw prompt)}"""
    out = {}
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")
            out[text] = torch.softmax(model(**ids).logits[0, -1].float(), dim=-1).half()
    return out


def best_per_rule(rules: list[dict], reach: str, limits=(0.03, 0.05, 0.09)) -> list[dict]:
    """For each rule family and each bound on same-subject activation: its setting that reaches the most rephrases."""
    families: dict[tuple, list[dict]] = {}
    for rule in rules:
        families.setdefault((rule["rule"], rule.get("low"), rule.get("high")), []).append(rule)
    best = []
    for limit in limits:
        for members in families.values():
            allowed = [r for r in members if r["subject_activated"] <= limit]
            if allowed:
                top = max(allowed, key=lambda r: (r[reach], -r["subject_activated"]))
                best.append({"subject_activated_at_most": limit, **top})
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="counterfact")
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--layers", default="6,10,14,18,22,26,30")
    parser.add_argument("--answer", action="store_true", help="also the base model's answer-distribution check")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    started = time.perf_counter()

    from sola.data import load_dataset
    from sola.data.aliases import alias_probes, common_words
    from sola.data.probes import normalise, rephrase_form
    from sola.eval.items import build_items, nq_pool
    from sola.eval.spec import BenchSpec
    from sola.loading import load_model
    from sola.routing.keys import SubjectRelationKeys
    from sola.routing.subjects import SubjectIndex, relation_text

    dataset = load_dataset(args.dataset).head(args.records)
    items = build_items(dataset, nq_pool(BenchSpec(method="sola", dataset=args.dataset)), seed=0, subject_count=1)
    records = [item.record for item in items]
    layers = [int(x) for x in args.layers.split(",") if x]

    index = SubjectIndex()
    for slot, record in enumerate(records):
        index.add(record.subject, slot)

    common = common_words()
    queries = []  # (kind, record index, text)
    for i, item in enumerate(items):
        for text in item.record.rephrases:
            queries.append(("rephrase", i, text))
        for kind, probes in item.probes.items():
            queries += [(kind, i, p.prompt) for p in probes]
        queries += [("alias", i, text) for text in alias_probes(item.record, common)]

    pairs = []  # (query number, candidate slot, relation text of the query masked with that candidate's subject)
    for q, (_, _, text) in enumerate(queries):
        for subject, slots in index.find(text).items():
            pairs += [(q, slot, relation_text(text, subject)) for slot in slots]
    edit_texts = [relation_text(r.prompt, r.subject) for r in records]
    pair_texts = sorted({t for _, _, t in pairs} | set(edit_texts))
    position = {t: n for n, t in enumerate(pair_texts)}

    encoder = SubjectRelationKeys(None)
    mini = torch.cat([encoder.encode(pair_texts[s:s + 64]) for s in range(0, len(pair_texts), 64)])
    _, model, tokenizer = load_model(None)
    lm = lm_features(model, tokenizer, pair_texts, layers) if layers else {}

    def distances(features: torch.Tensor) -> torch.Tensor:
        """cosine distance of each pair's query clause to its candidate's edit clause"""
        query = features[torch.tensor([position[t] for _, _, t in pairs])]
        key = features[torch.tensor([position[edit_texts[slot]] for _, slot, _ in pairs])]
        return 1 - (query * key).sum(-1)

    checks = {"minilm": distances(mini), **{f"lm{layer}": distances(lm[layer]) for layer in layers}}
    if args.answer:
        full = answer_distributions(model, tokenizer, sorted({queries[q][2] for q, _, _ in pairs}
                                                            | {r.prompt for r in records}))
        checks["answer"] = torch.tensor([
            1 - float((full[queries[q][2]].float() * full[records[slot].prompt].float()).sqrt().sum())
            for q, slot, _ in pairs])
    targets = [normalise(r.target) for r in records]
    counted = {kind: [q for q, (k, _, _) in enumerate(queries) if k == kind] for kind in
               ("rephrase", "alias", "unrelated", "relation", "subject")}
    if args.dataset == "counterfact":
        prefixed = [q for q in counted["rephrase"] if rephrase_form(records[queries[q][1]]) == "prefixed"]
        counted["rephrase_prefixed"] = prefixed

    def evaluate(routes: torch.Tensor, order: torch.Tensor) -> dict:
        """routes: (pairs,) bool, the pair's candidate passes the check -> the figures of each query kind"""
        best: dict[int, tuple[float, int]] = {}
        for (q, slot, _), ok, d in zip(pairs, routes.tolist(), order.tolist()):
            if ok and (q not in best or d < best[q][0]):
                best[q] = (d, slot)
        figures = {}
        for kind, members in counted.items():
            if not members:
                continue
            if kind.startswith("rephrase") or kind == "alias":
                right = sum(1 for q in members if q in best and targets[best[q][1]] == targets[queries[q][1]])
                figures[f"{kind}_reached"] = right / len(members)
            else:
                figures[f"{kind}_activated"] = sum(1 for q in members if q in best) / len(members)
        return figures

    rules = []
    for name, dist in checks.items():
        grid = torch.quantile(dist[dist.isfinite()], torch.linspace(0.05, 0.95, 19)).tolist() if name != "minilm" \
            else [0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8]
        for threshold in grid:
            rules.append({"rule": name, "threshold": round(threshold, 4), **evaluate(dist < threshold, dist)})
    second_looks = [f"lm{layer}" for layer in layers] + (["answer"] if args.answer else [])
    if args.answer:  # both checks must pass
        for high in (0.6, 0.7, 0.8, 0.9):
            for cut in torch.quantile(checks["answer"], torch.linspace(0.1, 0.9, 17)).tolist():
                passes = (checks["minilm"] < high) & (checks["answer"] < cut)
                rules.append({"rule": "minilm_and_answer", "low": None, "high": high, "threshold": round(cut, 4),
                              **evaluate(passes, checks["minilm"])})
    for second in second_looks:
        for low in (0.4, 0.5, 0.6):
            for high in (0.7, 0.8, 0.9):
                lm_dist = checks[second]
                cuts = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5) if second == "answer" \
                    else torch.quantile(lm_dist, torch.linspace(0.1, 0.9, 9)).tolist()
                for cut in cuts:
                    mini_dist = checks["minilm"]
                    passes = (mini_dist < low) | ((mini_dist < high) & (lm_dist < cut))
                    rules.append({"rule": f"two_stage {second}", "low": low, "high": high,
                                  "threshold": round(cut, 4), **evaluate(passes, mini_dist)})

    summary = {"dataset": args.dataset, "records": len(records), "queries": {k: len(v) for k, v in counted.items()},
               "pairs_under_gate": len(pairs), "model": "embedded SmolLM2-135M-Instruct", "prompt_format": "raw",
               "encoder": "all-MiniLM-L6-v2", "seconds": round(time.perf_counter() - started, 1), "rules": rules}
    summary["best"] = best_per_rule(rules, "rephrase_prefixed_reached" if "rephrase_prefixed" in counted
                                    else "rephrase_reached")
    for rule in rules:
        if rule["rule"] == "minilm":
            print(json.dumps(rule))
    for line in summary["best"]:
        print(json.dumps(line))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
