"""Means over records of every metric, in the field's and the SoLA paper's names, and the method's state facts."""

from __future__ import annotations

from typing import Any

from . import metrics as M
from .items import PROBE_KINDS


def summarise(rows: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Means over records of every metric, in the field's and the SoLA paper's names."""
    def avg(name):
        return M.mean(r.get(name) for r in rows)

    out: dict[str, Any] = {"records": len(rows)}
    out["teacher_forced"] = {"rel": avg("rel_tf"), "gen": avg("gen_tf"),
                             **{f"loc_{k}": avg(f"loc_{k}_tf") for k in PROBE_KINDS}, "alias": avg("alias_tf")}
    out["autoregressive"] = {"rel_em": avg("rel_em"), "rel_f1": avg("rel_f1"), "gen_em": avg("gen_em"),
                             "gen_f1": avg("gen_f1"), **{f"loc_{k}": avg(f"loc_{k}_ar") for k in PROBE_KINDS},
                             "alias_em": avg("alias_em")}
    out["alias_records"] = sum(1 for r in rows if r.get("alias_tf") is not None)
    out["paper"] = {"ES": avg("es_em"), "ES_tf": avg("es_tf"), "ERR": avg("rel_f1"), "TRR": avg("trr_f1"),
                    "TRR_base": avg("trr_f1_base")}
    if kind == "hallucination":
        arr = [a for r in rows for a in r.get("arr", [])]
        out["paper"].update(
            ERR_ppl=M.perplexity([r["rel_nll"] for r in rows], [r["rel_tokens"] for r in rows]),
            ERR_ppl_base=M.perplexity([r["rel_nll_base"] for r in rows if "rel_nll_base" in r],
                                      [r["rel_tokens"] for r in rows if "rel_nll_base" in r]),
            TRR_ppl=M.perplexity([r["loc_nll"] for r in rows if r.get("loc_nll") is not None]),
            TRR_ppl_base=M.perplexity([r["loc_nll_base"] for r in rows if r.get("loc_nll_base") is not None]),
            ARR_ppl=M.perplexity([a[0] for a in arr], [a[2] for a in arr]),
            ARR_ppl_base=M.perplexity([a[1] for a in arr], [a[2] for a in arr]), ARR_sentences=len(arr))
    routing: dict[str, Any] = {}
    routed = [x for r in rows for x in r.get("routes", [])]
    if routed:
        own = [r for r in rows if r.get("routes")]
        given_right = [r["gen_em"] for r in own if all(x["right_target"] for x in r["routes"])]
        routing.update({
            "rephrase_routed": M.mean(float(x["routed"]) for x in routed),
            "rephrase_own_edit": M.mean(float(x["own"]) for x in routed),
            "rephrase_right_target": M.mean(float(x["right_target"]) for x in routed),
            "gen_em_given_right_route": M.mean(given_right), "records_with_right_route": len(given_right),
            "rephrase_distance": M.quantiles([x["distance"] for x in routed if x["distance"] is not None]),
        })
    prompts = [r["prompt_route"] for r in rows if "prompt_route" in r]
    if prompts:  # the edit prompts themselves (Rel's routing; the hallucination task's passages)
        routing["prompt_own_edit"] = M.mean(float(x["own"]) for x in prompts)
    aliases = [x for r in rows for x in r.get("alias_routes", [])]
    if aliases:
        routing["alias_own_edit"] = M.mean(float(x["own"]) for x in aliases)
    for k in PROBE_KINDS:
        probes = [x for r in rows for x in r.get("probe_routes", {}).get(k, [])]
        if probes:
            routing[f"{k}_activated"] = M.mean(float(x["routed"]) for x in probes)
            routing[f"{k}_distance"] = M.quantiles([x["distance"] for x in probes if x["distance"] is not None])
    if routing:
        out["routing"] = routing
    return out


def method_state(described: dict[str, Any]) -> dict[str, Any]:
    """The scalar facts a method reports of its state (`info()`: edits, codebook entries and splits, MELO's clusters,
    centre updates and mismatches, ...), recorded at every checkpoint so they can be followed as edits arrive."""
    info = described.get("info", {})
    return {k: v for k, v in info.items() if isinstance(v, (int, float, bool))}
