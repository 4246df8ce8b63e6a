"""The `sola` command line: a thin shell over `sola.Editor`."""

from __future__ import annotations

import argparse
import json
import sys

from . import cli_ask
from .cli_bench import add_bench_parser
from .cli_common import Exit, emit, existing_store, open_editor, open_ledger, quiet_transformers, store_path
from .cli_serve import add_serve_parser
from .errors import SolaError
from .files import tree_bytes
from .locking import DEFAULT_WAIT  # stdlib only: `sola list` still starts without torch

# Exit codes: 0 done; 1 `sola fsck` found damage (without --repair); 2 bad input or an error that changed nothing;
# 3 an edit did not converge (refused, or stored with --keep-unconverged).
EXIT_DAMAGE, EXIT_ERROR, EXIT_NOT_CONVERGED = 1, 2, 3


def _describe(edit) -> str:
    converged = "" if edit.converged else ", NOT converged"
    supersedes = f", supersedes {edit.supersedes}" if edit.supersedes else ""
    subject = ""
    if edit.subject is not None:
        subject = f", subject {edit.subject!r}" + (" (read from the prompt; pass --subject to set it)"
                                                   if edit.subject_inferred else "")
    return (f"{edit.prompt!r} -> {edit.target!r} ({edit.steps} steps, loss {edit.loss:.4f}{converged}{supersedes}"
            f"{subject})")


def _planned(editor, plan) -> str:
    """A supersede decision in words, with the prompts of the edits it names."""
    if plan.supersedes:
        return f"update: supersedes {plan.supersedes} {editor.get(plan.supersedes).prompt!r}: {plan.reason}"
    if plan.nearest:
        return (f"new fact: nearest live edit {plan.nearest} {editor.get(plan.nearest).prompt!r} at "
                f"{plan.distance:.3f}: {plan.reason}")
    return f"new fact: {plan.reason}"


def _edit(args) -> None:
    from .errors import NotConvergedError
    from .prompts import check_text
    from .requests import read_requests

    # everything that needs no model is checked before the model loads
    if args.file:
        if args.prompt is not None:
            raise SolaError("give PROMPT and TARGET, or --file EDITS.jsonl, not both")
        requests, lines = read_requests(args.file)
    else:
        if args.prompt is None or args.target is None:
            raise SolaError("give PROMPT and TARGET (e.g. sola edit \"Who founded Acme?\" \"Jane Roe\"), or --file "
                            "EDITS.jsonl")
        check_text(args.prompt, "prompt")
        check_text(args.target, "target")
        if args.subject is not None:
            check_text(args.subject, "subject")
        for alias in args.alias or ():
            check_text(alias, "alias")
    if args.dry_run and args.file:
        raise SolaError("--dry-run plans one edit (PROMPT TARGET); it does not read --file")
    if args.dry_run and not args.file:
        from .store import Store

        if not Store.exists(store_path(args)):
            emit(args, {"prompt": args.prompt, "target": args.target, "action": "new fact", "supersedes": None,
                         "nearest": None, "distance": None, "reason": "the store does not exist yet"},
                  "would be a new fact: the store does not exist yet (dry run: nothing trained or stored)")
            return
    editor = open_editor(args, create=not args.dry_run)
    if not args.file:
        # the decision is made first and then followed exactly, so what is printed is what was done
        plan = editor.plan(args.prompt, args.target, subject=args.subject, aliases=args.alias or (),
                           supersedes=args.supersedes, new_fact=args.new_fact)
        if args.dry_run:
            emit(args, plan.to_dict(), f"would be a {_planned(editor, plan)} (dry run: nothing trained or stored)")
            return
        bar = _training_bar(args, editor)
        try:
            edit = editor.edit(args.prompt, args.target, subject=args.subject, aliases=args.alias or (),
                               supersedes=plan.supersedes, new_fact=plan.supersedes is None,
                               progress=bar and (lambda step, loss: (bar.update(1),
                                                                     bar.set_postfix(loss=f"{loss:.3f}"))))
        except NotConvergedError as err:
            print(f"error: {err}", file=sys.stderr)
            raise Exit(EXIT_NOT_CONVERGED) from None
        finally:
            if bar is not None:
                bar.close()
        emit(args, [{**edit.to_dict(), "decision": plan.to_dict()}],
              f"{edit.id}: {_describe(edit)}\n  {_planned(editor, plan)}")
        if not edit.converged:
            print(f"warning: {edit.id} did not converge but was stored (--keep-unconverged): the model may not answer "
                  f"{edit.prompt!r} with {edit.target!r}; `sola rollback {edit.id}` undoes it", file=sys.stderr)
            raise Exit(EXIT_NOT_CONVERGED)
        return

    unconverged = []

    def report(index: int, edit, status: str) -> None:
        line = lines[index]
        if not edit.converged:
            unconverged.append(line)
        if args.json:
            print(json.dumps({"line": line, "status": status, "edit": edit.to_dict()}), flush=True)
        elif status == "skipped":
            print(f"{edit.id}: {edit.prompt!r} -> {edit.target!r} (line {line}: already committed, skipped)",
                  flush=True)
        elif status == "refused":
            print(f"line {line}: {_describe(edit)}: not stored", flush=True)
        else:
            print(f"{edit.id}: {_describe(edit)}", flush=True)

    try:
        editor.edit_many(requests, batch_size=args.batch_size, skip_committed=not args.again, on_result=report)
    except SolaError as err:
        index = getattr(err, "request_index", None)
        if index is not None:
            raise SolaError(f"{args.file}, line {lines[index]}: {err.reason}") from None
        if not isinstance(err, NotConvergedError):
            raise
    if unconverged:
        stored = "stored all the same (--keep-unconverged)" if args.keep_unconverged else "not stored"
        print(f"error: the edits of line{'s' if len(unconverged) > 1 else ''} {', '.join(map(str, unconverged))} did "
              f"not converge within max_steps={editor.config.max_steps} and were {stored}; allow more steps with "
              "--max-steps N or shorten their targets, then run the same file again (committed lines are skipped)",
              file=sys.stderr)
        raise Exit(EXIT_NOT_CONVERGED)


def _training_bar(args, editor):
    """Steps and loss of the edit being trained, on a terminal's standard error (none with --json or when piped)."""
    if args.json or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=editor.config.max_steps, desc="training", unit="step", leave=False, file=sys.stderr)


def _status(edit) -> str:
    if not edit.live:
        return "rolled back"
    return f"superseded by {edit.superseded_by}" if edit.superseded_by else "live"


def _list(args) -> None:
    _, ledger, _ = open_ledger(args)
    edits = ledger.edits(include_rolled_back=args.all or args.history)
    if not args.history:
        rows = [f"{e.id:>6}  {_status(e):<11}  {e.prompt!r} -> {e.target!r}" for e in edits]
        emit(args, [e.to_dict() for e in edits], "\n".join(rows) or "no edits")
        return
    chains = [ledger.chain(e.id) for e in edits if e.answering]  # one per fact, answering edit last
    rolled = [e for e in edits if not e.live]
    lines = []
    for chain in chains:
        lines.append(" <- ".join(f"{e.id} {e.target!r}" for e in reversed(chain)) + f"   {chain[-1].prompt!r}")
    lines += [f"{e.id} {e.target!r}   {e.prompt!r}  (rolled back {e.rolled_back}"
              f"{f', had superseded {e.supersedes}' if e.supersedes else ''}{f'; {e.note}' if e.note else ''})"
              for e in rolled]
    emit(args, {"facts": [[e.to_dict() for e in chain] for chain in chains],
                 "rolled_back": [e.to_dict() for e in rolled]},
          "answering edit <- the edits it superseded\n" + "\n".join(lines) if lines else "no edits")


def _rollback(args) -> None:
    open_ledger(args)[1].live_edit(args.id)  # an unknown or rolled-back id fails here, before the model loads
    edit = open_editor(args, create=False).rollback(args.id)
    emit(args, edit.to_dict(), f"rolled back {edit.id}: {edit.prompt!r} -> {edit.target!r}")


def _info(args) -> None:
    from .config import config_for_store

    manifest, ledger, damage = open_ledger(args)
    path = existing_store(args)
    config = config_for_store(manifest["config"], None, path)
    info = {
        "model": manifest["model"].get("name"),
        "model_note": manifest.get("model_note"),
        "method": manifest.get("method"),
        "prompt_format": config.prompt_format,
        "layers": config.layers,
        "rank": config.rank,
        "key": config.key,
        "distance": config.resolved_distance(),
        "threshold": config.default_threshold(),
        "unnamed_threshold": config.resolved_unnamed_threshold() if config.key == "subject" else None,
        "supersede": config.supersede,
        "on_no_converge": config.on_no_converge,
        "edits": ledger.live_count,
        "superseded": ledger.superseded_count,
        "rolled_back": len(ledger) - ledger.live_count,
        "keys": ledger.key_count,
        "store": str(path),
        "store_bytes": tree_bytes(path),
        "damage": [d.message for d in damage] or None,
    }
    emit(args, info, "\n".join(f"{k}: {v}" for k, v in info.items()))


def _fsck(args) -> None:
    from .integrity import check_store, repair_store

    path = store_path(args)  # a store whose manifest is damaged is still checked: no existing_store
    if not path.is_dir():
        raise SolaError(f"there is no store at {path}; check --store")
    report = repair_store(path) if args.repair else check_store(path)
    emit(args, report.to_dict(), report.describe())
    if not report.ok:
        raise Exit(EXIT_DAMAGE)


def _export(args) -> None:
    from .adapters import export_all

    if bool(args.id) == args.all:
        raise SolaError("give an edit ID to export, or --all for every answering edit (see `sola list`)")
    if args.id:
        open_ledger(args)[1].live_edit(args.id)  # before the model loads
    editor = open_editor(args, create=False)
    if args.all:
        router = export_all(editor, args.out)
        emit(args, router, f"{len(router['adapters'])} adapters and the routing table ({len(router['edits'])} "
                            f"edits) in {args.out}")
    else:
        path = editor.export_peft(args.id, args.out)
        emit(args, {"edit": args.id, "adapter": str(path)}, f"edit {args.id} as a PEFT adapter in {path}")


def _demo(args) -> None:
    from .demo import run_demo

    if args.json:
        result = run_demo(args.data, out=lambda *_: None)
        print(json.dumps(result, indent=2, default=str))
    else:
        run_demo(args.data)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", help="store directory (default: $SOLA_HOME/stores/default)")
    common.add_argument("--model", help="local model directory (default: the embedded SmolLM2-135M-Instruct)")
    common.add_argument("--key", choices=["encoder", "subject", "mean_pool", "last_token"],
                        help="key strategy of a new store (default: subject)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    common.add_argument("--wait", type=float, default=DEFAULT_WAIT, metavar="SECONDS",
                        help="how long a change waits for another process writing to the store before it gives up "
                        "(default %(default)g)")
    readers = argparse.ArgumentParser(add_help=False)
    readers.add_argument("--skip-damaged", action="store_true",
                         help="open a damaged store read-only without the edits that cannot be read")
    parser = argparse.ArgumentParser(prog="sola", description="Reversible lifelong model editing (SoLA).",
                                     epilog="exit codes: 0 done; 1 fsck found damage; 2 bad input or an error (nothing "
                                     "was changed); 3 an edit did not converge")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", parents=[common], help="edit three zsRE facts, ask, roll one back")
    demo.add_argument("--data", help="benchmark data directory (holding zsre/)")
    demo.set_defaults(run=_demo)
    edit = commands.add_parser("edit", parents=[common], help="edit PROMPT to answer TARGET, or --file EDITS.jsonl")
    edit.add_argument("prompt", nargs="?")
    edit.add_argument("target", nargs="?")
    edit.add_argument("--subject", help="the entity the fact is about (default: the longest name in PROMPT)")
    edit.add_argument("--alias", action="append", metavar="NAME",
                      help="another name of the subject that should reach the edit too (repeatable)")
    edit.add_argument("--file", help="JSON lines with prompt/target (or src/alt, prompt/target_new)")
    edit.add_argument("--batch-size", type=int, default=16, help="with --file: edits trained together (default 16)")
    edit.add_argument("--again", action="store_true",
                      help="with --file: make every request, also those a live edit was already made from (by default "
                      "they are skipped, so re-running an interrupted file neither retrains nor duplicates)")
    edit.add_argument("--max-steps", type=int, help="training steps an edit may take (default: the store's, 60)")
    edit.add_argument("--keep-unconverged", action="store_true",
                      help="store an edit that did not converge (exit code 3 all the same); by default it is refused")
    update = edit.add_mutually_exclusive_group()
    update.add_argument("--supersedes", metavar="ID", help="this edit updates the fact of edit ID")
    update.add_argument("--new-fact", action="store_true", help="never treat this edit as an update")
    edit.add_argument("--dry-run", action="store_true",
                      help="say what the edit would do (a new fact, or an update of which edit and why) without "
                      "training or storing anything")
    edit.set_defaults(run=_edit)
    ask = commands.add_parser("ask", parents=[common, readers],
                              help="answer each PROMPT (greedy) and say which edit answered")
    ask.add_argument("prompts", nargs="*", metavar="PROMPT")
    ask.add_argument("--file", help="prompts one per line (- for standard input), after any given as arguments")
    ask.add_argument("--local", action="store_true", help="load the model here even when a `sola serve` runs on the "
                     "store (by default it answers, without loading the model)")
    ask.add_argument("--max-new-tokens", type=int, default=32)
    ask.set_defaults(run=cli_ask.ask)
    listing = commands.add_parser("list", parents=[common, readers], help="list the edits (reads the store alone)")
    listing.add_argument("--all", action="store_true", help="include rolled-back edits")
    listing.add_argument("--history", action="store_true",
                         help="one line per fact: the answering edit and the edits it superseded; then rollbacks")
    listing.set_defaults(run=_list)
    rollback = commands.add_parser("rollback", parents=[common], help="undo edit ID exactly")
    rollback.add_argument("id")
    rollback.set_defaults(run=_rollback)
    info = commands.add_parser("info", parents=[common, readers], help="model, config, edits, store size (reads the "
                               "store alone)")
    info.set_defaults(run=_info)
    fsck = commands.add_parser("fsck", parents=[common], help="check a store for damage; --repair moves it aside",
                               description="Check every file of a store. --repair moves what cannot be read into "
                               "STORE/quarantine/ (nothing is deleted), rolls back the edits that lost their tensors "
                               "and cuts a torn last line; the rest then opens. Exit code 1 if damage remains.")
    fsck.add_argument("--repair", action="store_true", help="quarantine what cannot be read and open the rest")
    fsck.set_defaults(run=_fsck)
    export = commands.add_parser("export", parents=[common, readers], help="write edit ID (or --all) as PEFT LoRA "
                                 "adapters, for serving engines", description="Write a live edit as a standard PEFT "
                                 "LoRA adapter directory (adapter_config.json + adapter_model.safetensors). With "
                                 "--all: every answering edit under OUT/adapters/ID/ and the routing table "
                                 "(router.json, router.safetensors). See docs/deployment.md.")
    export.add_argument("id", nargs="?", help="the edit to export")
    export.add_argument("--all", action="store_true", help="every answering live edit, and the routing table")
    export.add_argument("--out", required=True, help="the adapter directory (new or empty)")
    export.set_defaults(run=_export)
    route = commands.add_parser("route", parents=[common, readers], help="the adapter (edit) each PROMPT is routed "
                                "to, or none: what to put in front of a multi-LoRA engine")
    route.add_argument("prompts", nargs="*", metavar="PROMPT")
    route.add_argument("--file", help="prompts one per line (- for standard input), after any given as arguments")
    route.set_defaults(run=cli_ask.route)
    add_serve_parser(commands, common)
    add_bench_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("list", "info", "fsck", "ask"):  # those read files (or ask a server) first: no torch yet
        quiet_transformers()
    try:
        args.run(args)
    except Exit as done:
        return done.code
    except SolaError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
