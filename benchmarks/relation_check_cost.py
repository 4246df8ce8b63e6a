"""What the relation check costs an ask: the router's decision for one question naming an edited subject, among N
edits of named subjects, with relation_check="bank" and "none" (the real all-MiniLM-L6-v2 encoder; no language model:
the decision for key="subject" is made before the model runs, from the text).

SYNTHETIC EDITS: N made-up subjects ("Velkordan Misvel") each with one real question ("Who founded Company 1234?", keys
encoded by the real encoder in batches); the asked questions name some of them ("Who was the founder of
Velkordan Misvel?"). Each ask is timed alone, after one warm-up ask that
encodes (or reads the cache of) the bank.

Run: .venv/bin/python benchmarks/relation_check_cost.py --edits 10000 \
        --out docs/runs/experiments/relation-check-cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

RELATIONS = ["Who founded {}?", "Where is {} headquartered?", "Who is the CEO of {}?", "When was {} founded?",
             "What does {} make?", "Who owns {}?"]
ASKS = ["Who was the founder of {}?", "Where are the headquarters of {}?", "Who runs {}?",
        "In what year was {} set up?"]


def made_up_names(count: int) -> list[str]:
    """Distinct two-word names of made-up syllables ("Velkor Danmis"), so no two subjects share a word."""
    import random

    rng, names, seen = random.Random(0), [], set()
    syllables = ["vel", "kor", "dan", "mis", "tar", "quen", "bol", "ri", "sa", "lun", "gra", "vost", "ne", "pha",
                 "zen", "dru", "ol", "bra", "cim", "to", "hel", "ux", "ra", "mon"]
    while len(names) < count:
        words = ["".join(rng.choice(syllables) for _ in range(4)).capitalize() for _ in range(2)]
        if not seen & set(words):
            seen.update(words)
            names.append(" ".join(words))
    return names


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edits", type=int, default=10000)
    parser.add_argument("--asks", type=int, default=200)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from sola.config import EditConfig
    from sola.eval.provenance import machine
    from sola.nn import Decision
    from sola.routing.router import Router

    subjects = made_up_names(args.edits)
    prompts = [RELATIONS[n % len(RELATIONS)].format(s) for n, s in enumerate(subjects)]
    figures = {}
    keys = None
    for check in ("none", "bank"):
        router = Router(EditConfig(relation_check=check), None, None, Decision())
        if keys is None:
            started = time.perf_counter()
            keys = torch.cat([router.keys.relation(prompts[i:i + 256], subjects[i:i + 256])
                              for i in range(0, len(prompts), 256)])
            figures["key_encoding_s"] = round(time.perf_counter() - started, 1)
        router.add_many(list(range(args.edits)), keys, torch.ones(args.edits, dtype=torch.long), subjects)
        asks = [ASKS[n % len(ASKS)].format(subjects[(n * 7919) % args.edits]) for n in range(args.asks)]
        router.weigh_texts([asks[0]])  # warm-up: the bank encoded or read from its cache
        times, routed = [], 0
        for text in asks:
            started = time.perf_counter()
            found = router.weigh_texts([text])[0]
            times.append(time.perf_counter() - started)
            routed += found.rival is None and found.distance < router.config.resolved_threshold()
        figures[check] = {"median_ms": round(1000 * statistics.median(times), 2),
                          "p90_ms": round(1000 * sorted(times)[int(0.9 * len(times))], 2), "routed": routed / len(asks)}
        if router.relations is not None:  # the check's own work, apart from encoding the question (the same for both)
            checks = []
            for text in asks:
                for form, slots in router.subjects.find(text).items():
                    query = router.keys.relation([text], [form])[0]
                    for slot in slots:
                        distance = router.table.nearest_among(query, [slot])[0]
                        started = time.perf_counter()
                        router.relations.weigh(query, distance, router.profile(slot))
                        checks.append(time.perf_counter() - started)
            figures[check]["check_alone_median_ms"] = round(1000 * statistics.median(checks), 3)
        print(check, figures[check])
    figures["added_median_ms"] = round(figures["bank"]["median_ms"] - figures["none"]["median_ms"], 2)
    summary = {"edits": args.edits, "asks": args.asks, "encoder": "all-MiniLM-L6-v2", "machine": machine(), **figures}
    print(json.dumps(summary))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
