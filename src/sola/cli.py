"""The `sola` command line: a thin shell over `sola.Editor`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import SolaError
from .methods import METHODS


def _default_store() -> Path:
    from .loading import sola_home

    return sola_home() / "stores" / "default"


def _editor(args):
    from .config import EditConfig
    from .editor import Editor

    store = Path(args.store) if args.store else _default_store()
    config = None
    if not (store / "manifest.json").is_file() and args.key:
        config = EditConfig(key=args.key)
    return Editor.from_pretrained(args.model, store=store, config=config)


def _emit(args, data, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _edit(args) -> None:
    editor = _editor(args)
    if args.file:
        requests = []
        for number, line in enumerate(Path(args.file).read_text().splitlines(), start=1):
            if line.strip():
                try:
                    requests.append(json.loads(line))
                except json.JSONDecodeError:
                    raise SolaError(f"{args.file}, line {number}: not valid JSON") from None
        edits = editor.edit_many(requests, progress=not args.json, batch_size=args.batch_size)
    elif args.prompt and args.target:
        edits = [editor.edit(args.prompt, args.target, subject=args.subject, supersedes=args.supersedes,
                             new_fact=args.new_fact)]
    else:
        raise SolaError("give PROMPT and TARGET, or --file EDITS.jsonl")
    _emit(args, [e.to_dict() for e in edits],
          "\n".join(f"{e.id}: {e.prompt!r} -> {e.target!r} ({e.steps} steps, loss {e.loss:.4f}"
                    f"{'' if e.converged else ', NOT converged'}"
                    f"{f', supersedes {e.supersedes}' if e.supersedes else ''})" for e in edits))


def _ask(args) -> None:
    editor = _editor(args)
    answer = editor.generate(args.prompt, max_new_tokens=args.max_new_tokens)
    route = editor.route(args.prompt)
    data = {"prompt": args.prompt, "answer": answer,
            "route": {"edit": route.edit_id, "distance": route.distance} if route else None}
    via = f"  [edit {route.edit_id}, distance {route.distance:.3f}]" if route else "  [base model]"
    _emit(args, data, answer + via)


def _status(edit) -> str:
    if not edit.live:
        return "rolled back"
    return f"superseded by {edit.superseded_by}" if edit.superseded_by else "live"


def _list(args) -> None:
    editor = _editor(args)
    edits = editor.edits(include_rolled_back=args.all or args.history)
    if not args.history:
        rows = [f"{e.id:>6}  {_status(e):<11}  {e.prompt!r} -> {e.target!r}" for e in edits]
        _emit(args, [e.to_dict() for e in edits], "\n".join(rows) or "no edits")
        return
    chains = [editor.chain(e.id) for e in edits if e.answering]  # one per fact, answering edit last
    rolled = [e for e in edits if not e.live]
    lines = []
    for chain in chains:
        lines.append(" <- ".join(f"{e.id} {e.target!r}" for e in reversed(chain)) + f"   {chain[-1].prompt!r}")
    lines += [f"{e.id} {e.target!r}   {e.prompt!r}  (rolled back {e.rolled_back}"
              f"{f', had superseded {e.supersedes}' if e.supersedes else ''})" for e in rolled]
    _emit(args, {"facts": [[e.to_dict() for e in chain] for chain in chains],
                 "rolled_back": [e.to_dict() for e in rolled]},
          "answering edit <- the edits it superseded\n" + "\n".join(lines) if lines else "no edits")


def _rollback(args) -> None:
    edit = _editor(args).rollback(args.id)
    _emit(args, edit.to_dict(), f"rolled back {edit.id}: {edit.prompt!r} -> {edit.target!r}")


def _info(args) -> None:
    info = _editor(args).info()
    _emit(args, info, "\n".join(f"{k}: {v}" for k, v in info.items()))


def _demo(args) -> None:
    from .demo import run_demo

    if args.json:
        result = run_demo(args.data, out=lambda *_: None)
        print(json.dumps(result, indent=2, default=str))
    else:
        run_demo(args.data)


def _json_object(text: str | None, flag: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise SolaError(f"{flag}: not valid JSON ({err.msg}); e.g. {flag} '{{\"rank\": 8}}'") from None
    if not isinstance(value, dict):
        raise SolaError(f"{flag}: give a JSON object of EditConfig fields, e.g. {flag} '{{\"rank\": 8}}'")
    return value


def _bench(args) -> None:
    from .eval import BenchSpec, compare, run

    if args.compare:
        print(compare(args.compare, subset=args.subset))
        return
    if not args.out:
        raise SolaError("give --out DIR for the results (or --compare DIR DIR ... to compare finished runs)")
    threshold = args.threshold
    if threshold not in (None, "calibrate"):
        try:
            threshold = float(threshold)
        except ValueError:
            raise SolaError(f"--threshold {threshold!r}: give a number or 'calibrate'") from None
    spec = BenchSpec(method=args.method, dataset=args.dataset, edits=args.edits, data=args.data, model=args.model,
                     key=args.key, layers=args.layers.split(",") if args.layers else None, threshold=threshold,
                     checkpoints=[int(c) for c in args.checkpoints.split(",") if c] if args.checkpoints else [],
                     seed=args.seed, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                     reuse_adapters=args.reuse_adapters, locality=not args.no_locality,
                     full_locality=args.full_locality,
                     config=_json_object(args.config, "--config"))
    results = run(spec, args.out, progress=not args.json)
    if args.json:
        print(json.dumps({k: results[k] for k in ("metrics", "subsets", "cost", "timings")}, indent=2, default=str))
    else:
        print((Path(args.out) / "results.md").read_text())


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", help="store directory (default: $SOLA_HOME/stores/default)")
    common.add_argument("--model", help="local model directory (default: the embedded SmolLM2-135M-Instruct)")
    common.add_argument("--key", choices=["encoder", "subject", "mean_pool", "last_token"],
                        help="key strategy of a new store (default: encoder)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser = argparse.ArgumentParser(prog="sola", description="Reversible lifelong model editing (SoLA).")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", parents=[common], help="edit three zsRE facts, ask, roll one back")
    demo.add_argument("--data", help="benchmark data directory (holding zsre/)")
    demo.set_defaults(run=_demo)
    edit = commands.add_parser("edit", parents=[common], help="edit PROMPT to answer TARGET, or --file EDITS.jsonl")
    edit.add_argument("prompt", nargs="?")
    edit.add_argument("target", nargs="?")
    edit.add_argument("--subject", help="the entity the fact is about")
    edit.add_argument("--file", help="JSON lines with prompt/target (or src/alt, prompt/target_new)")
    edit.add_argument("--batch-size", type=int, default=16, help="with --file: edits trained together (default 16)")
    update = edit.add_mutually_exclusive_group()
    update.add_argument("--supersedes", metavar="ID", help="this edit updates the fact of edit ID")
    update.add_argument("--new-fact", action="store_true", help="never treat this edit as an update")
    edit.set_defaults(run=_edit)
    ask = commands.add_parser("ask", parents=[common], help="answer PROMPT (greedy) and say which edit answered")
    ask.add_argument("prompt")
    ask.add_argument("--max-new-tokens", type=int, default=32)
    ask.set_defaults(run=_ask)
    listing = commands.add_parser("list", parents=[common], help="list the edits")
    listing.add_argument("--all", action="store_true", help="include rolled-back edits")
    listing.add_argument("--history", action="store_true",
                         help="one line per fact: the answering edit and the edits it superseded; then rollbacks")
    listing.set_defaults(run=_list)
    rollback = commands.add_parser("rollback", parents=[common], help="undo edit ID exactly")
    rollback.add_argument("id")
    rollback.set_defaults(run=_rollback)
    info = commands.add_parser("info", parents=[common], help="model, method, edits, memory")
    info.set_defaults(run=_info)
    bench = commands.add_parser("bench", help="sequential editing benchmark: T edits, then every metric",
                                description="Run T edits one after another and evaluate them (teacher-forced and "
                                "generated, ES/ERR/TRR, three kinds of locality, routing, cost); or compare runs.")
    bench.add_argument("--method", default="sola", choices=list(METHODS),
                       help="sola, or a baseline in the same harness: grace, melo, lora-ft")
    bench.add_argument("--dataset", default="zsre", help="zsre, counterfact, hallucination, wikibio, scotus")
    bench.add_argument("--edits", type=int, default=1000, help="T, the number of sequential edits (default 1000)")
    bench.add_argument("--out", help="directory for results.json, results.md and plots (re-run to resume)")
    bench.add_argument("--data", help="data directory (like shared/data) or a file of the dataset's format")
    bench.add_argument("--model", help="local model directory (default: the embedded SmolLM2-135M-Instruct)")
    bench.add_argument("--key", choices=["encoder", "subject", "mean_pool", "last_token"], help="key strategy")
    bench.add_argument("--layers", help="comma-separated module names to edit")
    bench.add_argument("--threshold", help="routing threshold: a number, or 'calibrate' (1 %% of held-out NQ "
                       "questions fall within it of the edit prompts)")
    bench.add_argument("--checkpoints", default="10,100", help="also evaluate after these many edits (default 10,100)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--batch-size", type=int, default=16, help="evaluation batch size")
    bench.add_argument("--max-new-tokens", type=int, default=16, help="length cap of generated answers")
    bench.add_argument("--no-locality", action="store_true",
                       help="skip the locality probes (Rel/Gen and routing only; the report says Loc was not measured)")
    bench.add_argument("--full-locality", action="store_true",
                       help="run every locality probe through the edited model, also those no edit is routed to (by "
                       "default SoLA reads those from the base run: an unrouted input computes the base model exactly)")
    bench.add_argument("--reuse-adapters", help="a finished run over the same records whose LoRAs to import instead "
                       "of training again (only the key strategy and threshold may differ)")
    bench.add_argument("--config", help="further EditConfig fields as JSON, e.g. '{\"rank\": 8}'")
    bench.add_argument("--compare", nargs="+", metavar="DIR", help="print one table over these finished runs")
    bench.add_argument("--subset", default="all", help="with --compare: all, conflict_free or latest_wins")
    bench.add_argument("--json", action="store_true", help="print the summary as JSON")
    bench.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars are the ones that matter on a terminal
    try:
        args.run(args)
    except SolaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
