"""`sola bench` on the command line: its parser and what it runs (the harness is `sola.eval`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .errors import SolaError


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
                     seed=args.seed, batch_size=args.eval_batch_size, edit_batch_size=args.batch_size,
                     max_new_tokens=args.max_new_tokens,
                     reuse_adapters=args.reuse_adapters, locality=not args.no_locality,
                     full_locality=args.full_locality, withhold_subject=args.withhold_subject,
                     config=_json_object(args.config, "--config"))
    results = run(spec, args.out, progress=not args.json, rescore=args.rescore)
    if args.json:
        print(json.dumps({k: results[k] for k in ("metrics", "subsets", "cost", "timings")}, indent=2, default=str))
    else:
        print((Path(args.out) / "results.md").read_text())


class _MethodsHelp(argparse.HelpFormatter):
    """Lists the registered methods under `--method`, read only when the help is shown (the registry imports torch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest != "method":
            return super()._get_help_string(action)
        from .methods import registered

        listed = "; ".join(f"{m.name}: {m.summary}" for m in registered().values()).replace("%", "%%")
        return f"{action.help} (default sola). Registered: {listed}"


def add_bench_parser(commands) -> None:
    bench = commands.add_parser("bench", help="lifelong editing benchmark: T edits, then every metric",
                                formatter_class=_MethodsHelp,
                                description="Run T edits one after another (or --batch-size at a time) and "
                                "evaluate them (teacher-forced and "
                                "generated, ES/ERR/TRR, three kinds of locality, routing, cost); or compare runs.")
    bench.add_argument("--method", default="sola", help="the editing method")
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
    bench.add_argument("--batch-size", type=int, default=1,
                       help="the protocol: edits arrive this many at a time, each batch trained the method's own way "
                       "(SoLA: one LoRA per edit, trained together; GRACE: in order; MELO, ELDER: their shared modules "
                       "on the whole batch), then checked; 1 (default) is one edit at a time")
    bench.add_argument("--eval-batch-size", type=int, default=16, help="evaluation batch size")
    bench.add_argument("--max-new-tokens", type=int, default=16, help="length cap of generated answers")
    bench.add_argument("--no-locality", action="store_true",
                       help="skip the locality probes (Rel/Gen and routing only; the report says Loc was not measured)")
    bench.add_argument("--full-locality", action="store_true",
                       help="run every locality probe through the edited model, also those no edit is routed to (by "
                       "default SoLA reads those from the base run: an unrouted input computes the base model exactly)")
    bench.add_argument("--withhold-subject", action="store_true",
                       help="make the edits without the records' subjects, as a user who passes none (the editor "
                       "infers them); the probes still use them")
    bench.add_argument("--reuse-adapters", help="a finished run over the same records whose LoRAs to import instead "
                       "of training again (only the key strategy and threshold may differ)")
    bench.add_argument("--config", help="further EditConfig fields as JSON, e.g. '{\"rank\": 8}'")
    bench.add_argument("--rescore", action="store_true",
                       help="evaluate a finished run's edits again with the current code (re-running a finished "
                       "--out otherwise shows its results as written)")
    bench.add_argument("--compare", nargs="+", metavar="DIR", help="print one table over these finished runs")
    bench.add_argument("--subset", default="all", help="with --compare: all, conflict_free or latest_wins")
    bench.add_argument("--json", action="store_true", help="print the summary as JSON")
    bench.set_defaults(run=_bench)
