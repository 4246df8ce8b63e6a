"""docs/results.md from finished `sola bench` runs: generated from their results.json, never typed in.

Every run given is also archived as a compact summary (results.json without its per-edit rows) under
`docs/runs/`, so the document can be regenerated from the repository alone (`python -m sola.eval.study
docs/runs/*.json`) after the run directories, which are not committed, are gone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .report import _fmt, _get, headline_table, load_results, protocol_of, routing_table, wall_time

GOAL = ("Goal (issue 4), on both datasets: Rel ≥ 0.99, Gen ≥ 0.90, Loc ≥ 0.99 teacher-forced; Rel ≥ 0.95, Gen ≥ 0.85 "
        "autoregressive. Published at T=1000 on LLaMA-2-7B (Rel/Gen/Loc, teacher-forced): WISE .77/.72/1.00, "
        "GRACE .93/.08/1.00.")

PLOTS = ("metrics_vs_edits.png", "distances.png")


def label(results: dict) -> str:
    """How a run is named in the tables: the method, its key strategy or radius, and its threshold."""
    from ..methods.registry import method

    name = method(results["method"]).bench_label(results["config"], results["threshold"]["value"])
    batches = protocol_of(results)["batch_size"]
    data = _other_data(results)
    return (name + (", subject withheld" if results.get("spec", {}).get("withhold_subject") else "")
            + (f", batches of {batches}" if batches > 1 else "") + (f", {data} data" if data else ""))


def _other_data(results: dict) -> str | None:
    """The `--dataset` a run read when it is not its task's name (`wikibio`: KnowEdit's WikiBio, a hallucination
    task), else None."""
    asked = results.get("spec", {}).get("dataset")
    return asked if asked and asked != results["dataset"] else None


def archive(results: dict, directory: Path) -> Path:
    """Write the run's summary (no per-edit rows) as DIR/<dataset>-<method>[-<key>][-supersede][-thr<X>]-<T>.json."""
    config = results["config"]
    from ..methods.registry import method

    data = _other_data(results)
    parts = [results["dataset"], *([data] if data else []), results["method"],
             *method(results["method"]).bench_name_parts(config)]
    given = results.get("spec", {}).get("threshold")
    if isinstance(given, (int, float)):  # a threshold chosen by hand: its own file
        parts.append(f"thr{given:g}")
    if results.get("spec", {}).get("withhold_subject"):
        parts.append("nosubject")
    if protocol_of(results)["batch_size"] > 1:
        parts.append(f"b{protocol_of(results)['batch_size']}")
    parts.append(str(results["edits"]))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ("-".join(parts) + ".json")
    compact = {k: v for k, v in results.items() if k != "rows"}
    path.write_text(json.dumps(compact, indent=1, default=str) + "\n")
    return path


def curves(runs: list[tuple[str, dict]], out: Path, title: str) -> bool:
    """One figure, three panels (Rel, Gen, Loc teacher-forced, and Gen EM dashed), every run as a line against the
    number of edits made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("Rel", [("teacher_forced", "rel", "-"), ("autoregressive", "rel_em", "--")]),
              ("Gen", [("teacher_forced", "gen", "-"), ("autoregressive", "gen_em", "--")]),
              ("Loc", [("teacher_forced", "loc_unrelated", "-"), ("teacher_forced", "loc_relation", ":")])]
    drawn = [(name, r) for name, r in runs if len(r.get("checkpoints", [])) >= 2]
    if not drawn:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (panel, series) in zip(axes, panels):
        for n, (name, r) in enumerate(drawn):
            xs = [c["edits"] for c in r["checkpoints"]]
            for section, metric, style in series:
                ys = [_get(c["metrics"], section, metric) for c in r["checkpoints"]]
                if all(y is not None for y in ys):
                    ax.plot(xs, ys, style, marker="o", markersize=3, color=colours[n % len(colours)],
                            label=name if style == "-" else None)
        ax.set_xscale("log")
        ax.set_xlabel("edits made")
        ax.set_title({"Rel": "Rel (solid TF, dashed EM)", "Gen": "Gen (solid TF, dashed EM)",
                      "Loc": "Loc TF (solid NQ, dotted same relation)"}[panel], fontsize=9)
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("score on the edits made so far")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def cost_table(runs: list[tuple[str, dict]]) -> str:
    lines = ["| run | wall time | s/edit median | s/edit p90 | store bytes/edit | memory bytes/edit | "
             "generation time vs bare (same prompts) |", "|---|---|---|---|---|---|---|"]
    for name, r in runs:
        cost = r.get("cost", {})
        spe = cost.get("seconds_per_edit", {})
        memory = cost.get("memory_bytes_per_edit")
        inference = cost.get("inference", {})
        lines.append(f"| {name} | {wall_time(r['timings'])} | {_median_seconds(cost)} | "
                     f"{_fmt(spe.get('p90'))} | {_bytes(cost.get('store_bytes_per_edit'))} | "
                     f"{_bytes(sum(memory.values()) if memory else None)} | "
                     + (f"{inference['overhead'] * 100:+.1f} %" if "overhead" in inference else "–") + " |")
    return "\n".join(lines)


STATE_FIELDS = {"melo": ("clusters", "centre_updates", "mismatches", "blocks", "conflicts", "forgotten_keys"),
                "grace": ("entries", "expansions", "splits"),
                "elder": ("codes", "distinct_codes", "epsilon", "query_radius", "calibration_reached"),
                "elder-online": ("codes", "distinct_codes", "epsilon", "query_radius", "calibration_reached")}


def state_table(runs: list[tuple[str, dict]]) -> str | None:
    """What each method's state held at every checkpoint (MELO's clusters, centre updates and mismatches: the drift
    SoLA's Fig. 2 counts; GRACE's codebook entries, expansions and splits; ELDER's stored codes)."""
    lines = []
    for name, r in runs:
        fields = STATE_FIELDS.get(r["method"])
        states = [c for c in r.get("checkpoints", []) if c.get("state")]
        if not fields or not states:
            continue
        cells = [f"after {c['edits']}: " + ", ".join(f"{f.replace('_', ' ')} {_fmt(c['state'][f])}" for f in fields
                                                      if c["state"].get(f) is not None) for c in states]
        lines.append(f"| {name} | " + "; ".join(cells) + " |")
    return "\n".join(["| run | state at each checkpoint |", "|---|---|"] + lines) if lines else None


SIDE_BY_SIDE = [("Rel TF", "teacher_forced", "rel"), ("Gen TF", "teacher_forced", "gen"),
                ("Loc NQ / rel / subj TF", "teacher_forced", ("loc_unrelated", "loc_relation", "loc_subject")),
                ("Rel EM", "autoregressive", "rel_em"), ("Gen EM", "autoregressive", "gen_em"),
                ("Loc NQ / rel / subj AR", "autoregressive", ("loc_unrelated", "loc_relation", "loc_subject"))]


def side_by_side(runs: list[tuple[str, dict]]) -> str:
    """One table over every dataset and method: the headline metrics of all records, seconds and bytes per edit."""
    lines = ["| dataset | run | " + " | ".join(n for n, _, _ in SIDE_BY_SIDE) + " | s/edit median | "
             "store bytes/edit |", "|" + "---|" * (len(SIDE_BY_SIDE) + 4)]
    for name, r in runs:
        metrics = r["metrics"]["all"]
        cells = [" / ".join(_fmt(_get(metrics, section, k)) for k in keys) if isinstance(keys, tuple)
                 else _fmt(_get(metrics, section, keys)) for _, section, keys in SIDE_BY_SIDE]
        cost = r.get("cost", {})
        lines.append(f"| {r['dataset']} | {name} | " + " | ".join(cells) + f" | {_median_seconds(cost)} | "
                     f"{_bytes(cost.get('store_bytes_per_edit'))} |")
    return "\n".join(lines)


def protocols_table(runs: list[tuple[str, dict]]) -> str:
    """The methods under each protocol (one edit at a time, or batches of B), per dataset: the headline metrics of
    all records and the cost."""
    columns = " | ".join(n for n, _, _ in SIDE_BY_SIDE)
    lines = ["| dataset | method | protocol | run | " + columns + " | s/edit median |",
             "|" + "---|" * (len(SIDE_BY_SIDE) + 5)]
    ordered = sorted(runs, key=lambda nr: (nr[1]["dataset"], nr[1]["method"], protocol_of(nr[1])["batch_size"]))
    for name, r in ordered:
        metrics = r["metrics"]["all"]
        cells = [" / ".join(_fmt(_get(metrics, section, k)) for k in keys) if isinstance(keys, tuple)
                 else _fmt(_get(metrics, section, keys)) for _, section, keys in SIDE_BY_SIDE]
        lines.append(f"| {r['dataset']} | {r['method']} | {protocol_of(r)['name']} | {name} | " + " | ".join(cells)
                     + f" | {_median_seconds(r.get('cost', {}))} |")
    return "\n".join(lines)


# The SoLA paper's Table 1, hallucination column (SelfCheckGPT biographies on GRACE's fine-tuned GPT2-XL; perplexity,
# lower is better), as printed: ERR on the edited sentences, TRR on upstream WebText, ARR on accurate sentences.
PAPER_HALLUCINATION = {"grace": (15.84, 7.14, 10.00), "elder": (16.12, 5.87, 8.42), "melo": (17.45, 1.04, 2.66),
                       "sola": (15.15, 1.01, 7.35)}


def hallucination_table(runs: list[tuple[str, dict]]) -> str:
    """The hallucination task: ERR / TRR / ARR perplexities beside the base model's, whether the corrected sentence is
    generated, the passages' routing, and the SoLA paper's figures for the same method (another model and data)."""
    lines = ["| run | T | ERR PPL (base) | TRR PPL (base) | ARR PPL (base) | Rel EM | ERR F1 | prompt to own edit | "
             "same biography activated | other biography activated | upstream activated | s/edit median | "
             "paper ERR / TRR / ARR (GPT2-XL) |", "|" + "---|" * 13]
    for name, r in runs:
        metrics = r["metrics"]["all"]
        paper, routing = metrics.get("paper", {}), metrics.get("routing", {})
        published = PAPER_HALLUCINATION.get(r["method"])
        lines.append(
            f"| {name} | {r['edits']} | " + " | ".join(
                f"{_fmt(paper.get(k))} ({_fmt(paper.get(k + '_base'))})" for k in ("ERR_ppl", "TRR_ppl", "ARR_ppl"))
            + f" | {_fmt(_get(metrics, 'autoregressive', 'rel_em'))} | {_fmt(paper.get('ERR'))} | "
            + " | ".join(_fmt(routing.get(k)) for k in ("prompt_own_edit", "subject_activated", "relation_activated",
                                                       "unrelated_activated"))
            + f" | {_median_seconds(r.get('cost', {}))} | "
            + (" / ".join(f"{v:.2f}" for v in published) if published else "–") + " |")
    return "\n".join(lines)


def _median_seconds(cost: dict) -> str:
    """The median seconds of one edit; a run that imported its LoRAs shows the training run's and says so."""
    reused = " (LoRAs reused)" if cost.get("adapters_reused") else ""
    return f"{_fmt(cost.get('seconds_per_edit', {}).get('median'))}{reused}"


def _bytes(value) -> str:
    if value is None:
        return "–"
    return f"{value / 1024:.1f} KiB" if value < 1024 ** 2 else f"{value / 1024 ** 2:.2f} MiB"


def write_study(sources: list[str | Path], doc: str | Path, runs_dir: str | Path | None = None) -> None:
    """Write `doc` from run directories or archived summaries; archive every run directory under `runs_dir`
    (default: `runs/` beside the document)."""
    doc = Path(doc)
    figures = doc.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(runs_dir) if runs_dir else doc.parent / "runs"
    loaded = []
    for source in map(Path, sources):
        results = load_results(source)
        stem = source.stem
        if source.is_dir():
            stem = archive(results, runs_dir).stem
            for plot in PLOTS:
                if (source / plot).exists():
                    shutil.copy(source / plot, figures / f"{stem}-{plot}")
        loaded = [(s, r) for s, r in loaded if s != stem]  # a run given twice (its directory and its archive): once
        loaded.append((stem, results))
    lines = ["# Results", "",
             "Generated by `python -m sola.eval.study RUN_DIR_OR_SUMMARY... --doc docs/results.md` from each run's "
             "results.json (summaries archived in `docs/runs/`); do not edit by hand. TF = teacher-forced token "
             "accuracy; EM = exact match of the greedy answer; Loc NQ / rel / subj = unrelated questions, same "
             "relation about another subject, another relation about the same subject (see docs/evaluation.md).", "",
             GOAL, ""]
    earlier = sorted(p.name for p in doc.parent.glob("results-*.md"))
    if earlier:
        lines += ["Earlier runs kept as they were generated (their results.json is gone): "
                  + ", ".join(f"[{name}]({name})" for name in earlier) + ".", ""]
    ordered = sorted(loaded, key=lambda sr: (sr[1]["dataset"], sr[1]["method"] != "sola", sr[1]["method"]))
    lines += ["## All methods side by side", "",
              "Every record (T edits, then all of them re-checked). Loc: unchanged from the base model. s/edit: the "
              "median wall time of one edit; store bytes/edit: the method's store on disk over the edits made. "
              "Per-dataset tables with every metric, subsets, routing and cost follow.", "",
              side_by_side([(label(r), r) for _, r in ordered]), ""]
    if any(protocol_of(r)["batch_size"] > 1 for _, r in loaded):
        lines += ["## Protocols", "",
                  "The same methods with the edits arriving one at a time (our protocol) and in batches (`sola bench "
                  "--batch-size B`; MELO's and ELDER's authors ran batches of 100: each batch trains the method's own "
                  "way, then it is checked). See docs/methods.md for each paper's protocol.", "",
                  protocols_table([(label(r), r) for _, r in ordered]), ""]
    hallucination = [(label(r), r) for _, r in ordered if r["dataset"] == "hallucination"]
    if hallucination:
        lines += ["## Hallucination correction (the SoLA paper's third task)", "",
                  "WISE's edit passages (a biography so far -> the correct next sentence), scored by perplexity as "
                  "the paper does, each beside the base model's perplexity of the same text: ERR on the edited "
                  "sentences after all edits, TRR on upstream web text never edited (WISE's locality text stands "
                  "for WebText), ARR on accurate sentences of WISE's never-edited passages. Rel EM / ERR F1: the "
                  "corrected sentence generated. Routing: the edit passages reaching their own edit, and the share of "
                  "never-edited passages of the same biographies, of other biographies, and of upstream text that "
                  "activate any edit. The paper's figures are on another model (GRACE's fine-tuned GPT2-XL) and "
                  "data (SelfCheckGPT's 1,392 sentences, WebText): compare the ordering of methods and each figure "
                  "with its own base, not the numbers across. See docs/evaluation.md.", "",
                  hallucination_table(hallucination), ""]
    for dataset in sorted({r["dataset"] for _, r in loaded}):
        chosen = [(s, r) for s, r in loaded if r["dataset"] == dataset]
        named = [(label(r), r) for _, r in chosen]
        first = chosen[0][1]
        lines += [f"## {dataset}, T = {first['edits']}", "",
                  f"Model `{first['model']['name']}`; {first['machine']['cpus']} CPUs "
                  f"({first['machine']['platform']}); code versions: "
                  + ", ".join(sorted({r['code_version'] for _, r in chosen})) + ".", ""]
        subsets = list(dict.fromkeys(s for _, r in chosen for s in r["metrics"]))
        for subset in subsets:
            rows = [(name, r["metrics"][subset]) for name, r in named if subset in r["metrics"]]
            counts = sorted({r["subsets"][subset] for _, r in named if subset in r["subsets"]})
            lines += [f"### {subset} ({'/'.join(map(str, counts))} records)", "", headline_table(rows), ""]
            routed = [(n, m) for n, m in rows if m.get("routing")]
            if routed:
                lines += [routing_table(routed), ""]
        lines += ["### Cost", "", cost_table(named), ""]
        states = state_table(named)
        if states:
            lines += ["### Method state as edits arrive", "", states, ""]
        curve = figures / f"{dataset}-curves.png"
        if curves(named, curve, f"{dataset}: scores on the edits made so far, after 10, 100, ... edits"):
            lines += [f"![{curve.name}](figures/{curve.name})", ""]
        for stem, r in chosen:
            shown = [f"![{stem}-{p}](figures/{stem}-{p})" for p in PLOTS if (figures / f"{stem}-{p}").exists()]
            if shown:
                lines.append(f"- {label(r)}: " + " ".join(shown))
        findings = first["findings"]
        lines += ["", f"Data: {findings['conflicting_records']} conflicting records; "
                  f"{len(findings['collisions'])} locality probes mention another edit's subject; probes "
                  f"{findings['probe_counts']}.", ""]
        superseding = [(name, r["findings"].get("edits_that_superseded", 0)) for name, r in named
                       if r["config"].get("supersede") == "auto"]
        for name, count in superseding:
            lines += [f"{name}: {count} edits superseded an earlier edit.", ""]
    doc.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="write docs/results.md from finished sola bench runs")
    parser.add_argument("runs", nargs="+", help="run directories (archived) or archived summaries (docs/runs/*.json)")
    parser.add_argument("--doc", default="docs/results.md")
    parser.add_argument("--runs-dir", help="where run directories are archived (default: runs/ beside --doc)")
    args = parser.parse_args()
    write_study(args.runs, args.doc, args.runs_dir)
    print("wrote", args.doc)
