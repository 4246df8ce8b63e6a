"""Edit requests as users give them: one dict per edit, in Python or as JSON lines in a file, and the checks that need
no model (so that a bad file is refused before a model is loaded)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import InvalidEditError, RequestError
from .prompts import check_text

PROMPT_FIELDS = ("prompt", "src", "question")  # ours, zsRE's, NQ's
TARGET_FIELDS = ("target", "target_new", "alt", "answer")  # ours, EasyEdit's, zsRE's, NQ's


def parse_request(request: Any, index: int) -> dict[str, Any]:
    """One request (`index`: its place in the batch, from 0) -> {prompt, target, subject, aliases, supersedes,
    new_fact}, its
    texts checked. Raises `RequestError` naming the request counted from 1."""
    if not isinstance(request, dict):
        raise RequestError(index, f"must be a JSON object (dict) with 'prompt' and 'target', got "
                                  f"{type(request).__name__}")
    prompt = next((request[f] for f in ("prompts", *PROMPT_FIELDS) if f in request), None)
    target = next((request[f] for f in TARGET_FIELDS if f in request), None)
    if isinstance(target, dict):  # EasyEdit sometimes nests {"str": ...}
        target = target.get("str")
    if prompt is None or target is None:
        raise RequestError(index, f"needs a prompt ({'/'.join(PROMPT_FIELDS)}) and a target "
                                  f"({'/'.join(TARGET_FIELDS)}); it has {sorted(request)}")
    try:
        for text in [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, list) else [prompt]:
            check_text(text, "prompt")
        check_text(target, "target")
        if request.get("subject") is not None:
            check_text(request["subject"], "subject")
        aliases = request.get("aliases") or []
        if not isinstance(aliases, list):
            raise InvalidEditError(f"aliases must be a list of names, got {type(aliases).__name__}")
        for alias in aliases:
            check_text(alias, "alias")
        if request.get("supersedes") is not None and not isinstance(request["supersedes"], str):
            raise InvalidEditError(f"supersedes must be an edit id such as \"e3\", got {request['supersedes']!r}")
    except InvalidEditError as err:
        raise RequestError(index, str(err)) from None
    if isinstance(prompt, list) and not prompt:
        raise RequestError(index, "'prompts' is an empty list; give at least one prompt")
    return {"prompt": prompt, "target": target, "subject": request.get("subject"), "aliases": tuple(aliases),
            "supersedes": request.get("supersedes"), "new_fact": bool(request.get("new_fact", False))}


def read_requests(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[int]]:
    """The requests of a JSON-lines file (blank lines skipped) and the line each came from (counted from 1, as an
    editor shows them). Every line is checked (`parse_request`); the first bad one raises `InvalidEditError` naming
    the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InvalidEditError(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}; give a file of edit "
                               'requests, one JSON object a line, e.g. {"prompt": "Who founded Acme?", "target": '
                               '"Jane Roe"}')
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise InvalidEditError(f"{path}, line {line}: not valid UTF-8 (byte 0x{data[err.start]:02x} at column "
                               f"{column}); save the file as UTF-8") from None
    requests, lines = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            raise InvalidEditError(f"{path}, line {number}: not valid JSON ({err.msg} at column {err.colno})") from None
        try:
            parse_request(raw, len(requests))
        except RequestError as err:
            raise InvalidEditError(f"{path}, line {number}: {err.reason}") from None
        requests.append(raw)
        lines.append(number)
    if not requests:
        raise InvalidEditError(f"{path} holds no edit requests (it is empty or blank); write one JSON object a line, "
                               'e.g. {"prompt": "Who founded Acme?", "target": "Jane Roe"}')
    return requests, lines
