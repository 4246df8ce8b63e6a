"""`sola ask` and `sola route`: questions from arguments, a file or standard input, answered or routed with one model
load."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .cli_common import emit, open_editor, store_path
from .errors import SolaError


def ask(args) -> None:
    """Answer each prompt with one model load, or, when a `sola serve` runs on the store, through it (no load; --local
    loads the model all the same). Before the first edit (no store yet) the base model answers, and nothing is
    created."""
    from .journal import MANIFEST

    prompts = prompts_of(args)
    stored = (store_path(args) / MANIFEST).is_file()
    if stored and not args.local and args.model is None and _ask_server(args, prompts):
        return
    if stored:
        editor = open_editor(args, create=False)
        note = None
    else:
        from .cli_common import quiet_transformers
        from .editor import Editor

        quiet_transformers()
        editor = Editor.from_pretrained(args.model)
        note = (f"no store at {store_path(args)} yet: these are the base model's answers (nothing was created; "
                "`sola edit` makes the store)")
        print(note, file=sys.stderr)
    for prompt in prompts:
        answer = editor.generate(prompt, max_new_tokens=args.max_new_tokens)
        why = editor.explain(prompt)
        data = {"prompt": prompt, "answer": answer,
                "route": {"edit": why.edit_id, "distance": why.distance} if why.routed else None,
                "explanation": why.to_dict(), **({"note": note} if note else {})}
        _show(args, len(prompts), data, str(why))


def _ask_server(args, prompts: list[str]) -> bool:
    """Ask the server running on the store, if there is one; False (nothing printed on standard output) if there is
    none or it cannot answer, so that the model is loaded instead."""
    import urllib.error
    import urllib.request

    from .serve.discovery import find

    server = find(store_path(args))
    if server is None:
        return False
    headers = {"Content-Type": "application/json"}
    if server.get("read_token"):
        try:
            headers["Authorization"] = "Bearer " + Path(server["token_file"]).read_text().strip()
        except OSError:
            return False
    rows = []
    try:
        for prompt in prompts:
            request = urllib.request.Request(
                server["url"] + "/v1/ask", headers=headers, method="POST",
                data=json.dumps({"prompt": prompt, "max_new_tokens": args.max_new_tokens, "base": False,
                                 "stop_at_newline": False}).encode())
            with urllib.request.urlopen(request, timeout=600) as response:
                rows.append(json.loads(response.read()))
    except urllib.error.HTTPError as error:  # the server refused the question: its message is the answer
        message = json.loads(error.read() or b"{}").get("message", str(error))
        raise SolaError(message) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        print(f"the server at {server['url']} did not answer ({error}); loading the model instead", file=sys.stderr)
        return False
    print(f"(answered by the server at {server['url']}, pid {server['pid']}; --local loads the model here)",
          file=sys.stderr)
    for prompt, row in zip(prompts, rows):
        data = {"prompt": prompt, "answer": row["answer"], "route": row["route"] and {
            "edit": row["route"]["edit_id"], "distance": row["route"]["distance"]},
            "explanation": {k: v for k, v in row["explanation"].items() if k != "text"}, "server": server["url"]}
        _show(args, len(prompts), data, row["explanation"]["text"])
    return True


def _show(args, asked: int, data: dict, why: str) -> None:
    """One answer: "answer  [why]" (with the question when several were asked), or JSON (one line each when
    several, as `sola edit --file --json`)."""
    line = f"{data['answer']}  [{why}]"
    if args.json and asked > 1:
        print(json.dumps(data, default=str))
    else:
        emit(args, data, line if asked == 1 else f"Q: {data['prompt']}\nA: {line}")


def prompts_of(args) -> list[str]:
    """The PROMPT arguments, then --file's lines (- : standard input), each checked (no model is loaded yet)."""
    from .prompts import check_text

    prompts = list(args.prompts)
    if args.file:
        text = sys.stdin.read() if args.file == "-" else read_text(args.file)
        prompts += [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise SolaError("give PROMPT arguments or --file FILE (one prompt a line, - for standard input)")
    for prompt in prompts:
        check_text(prompt, "prompt")
    return prompts


def route(args) -> None:
    prompts = prompts_of(args)
    editor = open_editor(args, create=False)
    routes = editor.route_many(prompts)
    rows = [{"prompt": p, "adapter": r.edit_id if r else None, "distance": r.distance if r else None}
            for p, r in zip(prompts, routes)]
    if args.json:
        print("\n".join(json.dumps(row) for row in rows))
        return
    for row in rows:
        where = f"{row['adapter']}  (distance {row['distance']:.3f})" if row["adapter"] else "base model"
        print(f"{where}\t{row['prompt']}")


def read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SolaError(f"cannot read {path}: {err}") from None
