"""Reports of a benchmark run: results.json (everything), results.md (the tables), PNG plots; and comparisons."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..files import atomic_write

# (label, section, metric) of the headline table: teacher-forced and autoregressive side by side
HEADLINE = [
    ("Rel TF", "teacher_forced", "rel"), ("Gen TF", "teacher_forced", "gen"),
    ("Loc NQ TF", "teacher_forced", "loc_unrelated"), ("Loc rel TF", "teacher_forced", "loc_relation"),
    ("Loc subj TF", "teacher_forced", "loc_subject"),
    ("Rel EM", "autoregressive", "rel_em"), ("Gen EM", "autoregressive", "gen_em"),
    ("Gen F1", "autoregressive", "gen_f1"),
    ("Loc NQ AR", "autoregressive", "loc_unrelated"), ("Loc rel AR", "autoregressive", "loc_relation"),
    ("Loc subj AR", "autoregressive", "loc_subject"),
    ("ES", "paper", "ES"), ("ERR F1", "paper", "ERR"),
    ("Alias TF", "teacher_forced", "alias"), ("Alias EM", "autoregressive", "alias_em"),
]


def wall_time(timings: dict[str, Any]) -> str:
    """A run's wall time in minutes; a lower bound if it was resumed from progress that did not record its time."""
    minutes = f"{timings['total_s'] / 60:.1f} min"
    if timings.get("earlier_sessions_unrecorded"):
        return f">= {minutes} (resumed after {timings.get('resumed_after_edits')} edits whose time was not recorded)"
    return minutes


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _get(metrics: dict, section: str, name: str):
    return metrics.get(section, {}).get(name)


def headline_table(rows: list[tuple[str, dict]]) -> str:
    """rows: (label, metrics summary) -> a markdown table of the headline metrics."""
    header = "| run | records | " + " | ".join(label for label, _, _ in HEADLINE) + " |"
    lines = [header, "|" + "---|" * (len(HEADLINE) + 2)]
    for label, metrics in rows:
        cells = [_fmt(_get(metrics, s, n)) for _, s, n in HEADLINE]
        lines.append(f"| {label} | {metrics.get('records')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def routing_table(rows: list[tuple[str, dict]]) -> str:
    names = [("rephrase routed", "rephrase_routed"), ("to own edit", "rephrase_own_edit"),
             ("to right target", "rephrase_right_target"), ("Gen EM given right route", "gen_em_given_right_route"),
             ("NQ activated", "unrelated_activated"), ("same-relation activated", "relation_activated"),
             ("same-subject activated", "subject_activated"), ("alias to own edit", "alias_own_edit"),
             ("prompt to own edit", "prompt_own_edit")]
    lines = ["| run | " + " | ".join(n for n, _ in names) + " |", "|" + "---|" * (len(names) + 1)]
    for label, metrics in rows:
        routing = metrics.get("routing", {})
        lines.append(f"| {label} | " + " | ".join(_fmt(routing.get(k)) for _, k in names) + " |")
    return "\n".join(lines)


def _run_label(results: dict) -> str:
    config = results.get("config", {})
    batches = protocol_of(results)["batch_size"]
    return (f"{results['method']} {results['dataset']} T={results['edits']} key={config.get('key')}"
            + (f", batches of {batches}" if batches > 1 else ""))


def protocol_of(results: dict) -> dict:
    """How a run's edits arrived (runs from before batches existed were sequential)."""
    return results.get("protocol") or {"batch_size": 1, "name": "sequential"}


def _edits_made_by(results: dict) -> str:
    """", edits made by A (100), B (900)" when more than one code made a resumed run's edits; else nothing."""
    spans = results.get("code_versions") or []
    if len(spans) < 2:
        return ""
    return ", edits made by " + ", ".join(f"{s['code'] or 'unrecorded code'} ({s['edits']})" for s in spans)


def markdown(results: dict) -> str:
    label = _run_label(results)
    subsets = [(f"{name} ({results['subsets'][name]})", results["metrics"][name]) for name in results["metrics"]]
    cost = results.get("cost", {})
    findings = results.get("findings", {})
    lines = [
        f"# {label}", "",
        f"Model: `{results['model'].get('name')}`; code {results['code_version']}{_edits_made_by(results)}; threshold "
        f"{_fmt(results['threshold']['value'])} ({results['threshold']['how']}); data `{results['data']['path']}`.",
        f"Machine: {results['machine']['platform']}, {results['machine']['cpus']} CPUs, torch "
        f"{results['machine']['torch']}. Wall time {wall_time(results['timings'])}.", "",
        "TF = teacher-forced token accuracy; EM/F1 = greedy generation (stop at EOS, newline or "
        f"{results['spec']['max_new_tokens']} tokens), exact match / token F1 after normalisation. Loc = unchanged "
        "from the base model: NQ = unrelated questions, rel = same relation other subject, subj = same subject other "
        "relation.", "",
        *(["Locality was not measured in this run (`--no-locality`).", ""]
          if not results["spec"].get("locality", True) else []),
        "## After all edits", "", headline_table(subsets), "",
        "## Routing", "", routing_table(subsets), "",
    ]
    if results.get("checkpoints"):
        lines += ["## During the sequence", "",
                  headline_table([(f"after {c['edits']}", c["metrics"]) for c in results["checkpoints"]]), ""]
    if results["dataset"] == "hallucination" or "ERR_ppl" in results["metrics"]["all"].get("paper", {}):
        paper = results["metrics"]["all"]["paper"]
        lines += ["## Perplexity (the base model's beside each)", "",
                  "| ERR PPL (edited sentences) | base | TRR PPL (upstream text) | base | ARR PPL (accurate sentences "
                  "never edited) | base | ARR sentences |", "|---|---|---|---|---|---|---|",
                  f"| {_fmt(paper.get('ERR_ppl'))} | {_fmt(paper.get('ERR_ppl_base'))} | {_fmt(paper.get('TRR_ppl'))} "
                  f"| {_fmt(paper.get('TRR_ppl_base'))} | {_fmt(paper.get('ARR_ppl'))} | "
                  f"{_fmt(paper.get('ARR_ppl_base'))} | {paper.get('ARR_sentences', '–')} |", ""]
    spe = cost.get("seconds_per_edit", {})
    lines += ["## Cost", "",
              f"- seconds per edit: median {_fmt(spe.get('median'))}, p90 {_fmt(spe.get('p90'))}"
              + (" (adapters reused from another run; times are from when they were trained)"
                 if cost.get("adapters_reused") else "")]
    if "inference" in cost:
        inf = cost["inference"]
        lines.append(f"- inference on {inf['prompts']} unrelated prompts: "
                     f"{inf.get('edited_tokens_per_s', 0):.1f} tok/s "
                     f"edited vs {inf.get('base_tokens_per_s', 0):.1f} tok/s bare; time for the same prompts "
                     f"{inf['overhead'] * 100:+.1f} % (an edit that makes answers longer costs time, not speed)")
    if "memory_bytes_per_edit" in cost:
        lines.append(f"- memory per edit: {sum(cost['memory_bytes_per_edit'].values()) / 1024:.1f} KiB")
    lines += ["", "## What the data holds", "",
              f"- {findings.get('conflicting_records', 0)} of {results['edits']} records share their subject with "
              "another record that has a different target (no editor can satisfy both); `conflict_free` leaves them "
              "out, and `latest_wins` scores each of them against its group's last target "
              f"({findings.get('read_against_a_later_target', 0)} records read against a later target).",
              f"- {findings.get('edits_that_superseded', 0)} edits superseded an earlier edit of the same fact "
              f"(config supersede={results['config'].get('supersede', 'never')}).",
              f"- probes: {findings.get('probe_counts')}",
              f"- {len(findings.get('collisions', []))} locality probes mention the subject of another edit in this "
              "run (a correct editor may change them):"]
    for c in findings.get("collisions", [])[:20]:
        lines.append(f"  - {c['record']}: \"{c['probe']}\" vs {c['edit']} \"{c['edit_prompt']}\"")
    plots = [p for p in ("metrics_vs_edits.png", "distances.png") if (Path(results.get("_out", ".")) / p).exists()]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def plot(results: dict, out: Path) -> list[Path]:
    """metrics_vs_edits.png (if there are checkpoints) and distances.png (if the method routes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    points = results.get("checkpoints", [])
    if len(points) >= 2:
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = [p["edits"] for p in points]
        for label, section, name in HEADLINE[:11]:
            ys = [_get(p["metrics"], section, name) for p in points]
            if all(y is not None for y in ys):
                ax.plot(xs, ys, marker="o", label=label, linestyle="-" if section == "teacher_forced" else "--")
        ax.set_xscale("log")
        ax.set_xlabel("edits made")
        ax.set_ylabel("score on the edits made so far")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(_run_label(results))
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "metrics_vs_edits.png", dpi=110)
        plt.close(fig)
        written.append(out / "metrics_vs_edits.png")
    rows = results.get("rows", [])
    rephrase = [x["distance"] for r in rows for x in r.get("routes", []) if x["distance"] is not None]
    if rephrase:
        fig, ax = plt.subplots(figsize=(7, 4))
        series = {"rephrases (to nearest key)": rephrase}
        for kind, label in (("unrelated", "NQ questions"), ("relation", "same relation, other subject"),
                            ("subject", "same subject, other relation")):
            values = [x["distance"] for r in rows for x in r.get("probe_routes", {}).get(kind, [])
                      if x["distance"] is not None]
            if values:
                series[label] = values
        low = min(min(v) for v in series.values())
        high = max(max(v) for v in series.values())
        bins = [low + (high - low) * i / 50 for i in range(51)]
        for label, values in series.items():
            ax.hist(values, bins=bins, alpha=0.5, label=label, density=True)
        threshold = results["threshold"]["value"]
        if threshold:
            ax.axvline(threshold, color="black", linestyle=":", label=f"threshold {threshold:.3f}")
        ax.set_xlabel("distance to the nearest key")
        ax.set_title(_run_label(results))
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "distances.png", dpi=110)
        plt.close(fig)
        written.append(out / "distances.png")
    return written


def write_report(results: dict, out: str | Path) -> None:
    """The plots, results.md, then results.json: written last and renamed into place, so a run whose results.json
    exists finished with its whole report (see `RunDir.results`)."""
    out = Path(out)
    plot(results, out)
    (out / "results.md").write_text(markdown({**results, "_out": str(out)}))
    text = json.dumps(results, indent=1, default=str)
    atomic_write(out / "results.json", lambda temp: temp.write_text(text))


def load_results(source: str | Path) -> dict:
    """A run's results: its directory (written by `sola bench --out DIR`) or a results JSON file (such as the
    summaries archived in docs/runs/)."""
    path = Path(source) if Path(source).is_file() else Path(source) / "results.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist; give directories written by `sola bench --out DIR`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None


def compare(directories: list[str | Path], subset: str = "all") -> str:
    """One markdown table (headline and routing) over several runs."""
    runs = [load_results(d) for d in directories]
    rows = [(f"{_run_label(r)} [{subset}]", r["metrics"].get(subset, r["metrics"]["all"])) for r in runs]
    return headline_table(rows) + "\n\n" + routing_table(rows) + "\n"
