"""Loaders of the published benchmark formats into `Record`s.

Every loader reads one file; a malformed record raises `DataError` naming the file, the line where the record starts
and the field. Files are read at run time from where the user keeps them (`sola.data.data_dir`), never copied.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError
from .location import data_dir
from .records import Dataset, Probe, Record

# -- reading files with line numbers -------------------------------------------------------------------------------


def read_json_records(path: str | os.PathLike, key: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line, item) for each item of a JSON array (or of the array under `key` in a JSON object), or of a JSON-lines
    file. The line is where the item starts, so an error can point at it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    stripped = text.lstrip()
    if path.suffix == ".jsonl" or (stripped[:1] == "{" and key is None):
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
        return
    decoder = json.JSONDecoder()
    try:
        if key is not None:
            whole = json.loads(text)
            if not isinstance(whole, dict) or key not in whole or not isinstance(whole[key], list):
                raise DataError(f"{path}: expected a JSON object with a list under {key!r}")
            for index, item in enumerate(whole[key]):
                yield index + 1, item  # one item per "line" of the logical list
            return
        position = len(text) - len(stripped)
        if text[position:position + 1] != "[":
            raise DataError(f"{path}, line 1: expected a JSON array of records or JSON lines")
        position += 1
        while True:
            while position < len(text) and text[position] in " \t\r\n,":
                position += 1
            if position >= len(text) or text[position] == "]":
                return
            item, end = decoder.raw_decode(text, position)
            yield text.count("\n", 0, position) + 1, item
            position = end
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None


class _Fields:
    """Typed access to one raw record, with errors that name file, line and field."""

    def __init__(self, path: Path, line: int, item: Any) -> None:
        self.path, self.line, self.item = path, line, item
        if not isinstance(item, dict):
            raise self.error(None, f"expected a JSON object, got {type(item).__name__}")

    def error(self, name: str | None, problem: str) -> DataError:
        where = f"{self.path.name}, line {self.line}" + (f", field {name!r}" if name else "")
        return DataError(f"{where}: {problem} (file {self.path})")

    def text(self, name: str, optional: bool = False) -> str | None:
        value = self.item.get(name)
        if isinstance(value, dict) and "str" in value:  # CounterFact/EasyEdit nest answers as {"str": ...}
            value = value["str"]
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = value[0]  # several gold answers: the first is the canonical one
        if optional and (value is None or value == "" or value == []):
            return None
        if not isinstance(value, str) or not value.strip():
            state = "missing" if name not in self.item else f"not a non-empty string ({value!r:.60})"
            raise self.error(name, f"{state}; every record needs it")
        return value.strip()  # zsRE has targets like " MAT-49": the answer is "MAT-49"

    def texts(self, name: str) -> tuple[str, ...]:
        value = self.item.get(name)
        if value is None:
            return ()
        if isinstance(value, str):
            return (value.strip(),) if value.strip() else ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, f"expected a string or a list of strings, got {type(value).__name__}")
        return tuple(v.strip() for v in value if v.strip())


# -- the benchmarks ------------------------------------------------------------------------------------------------


def load_zsre(path: str | os.PathLike) -> Dataset:
    """zsRE in the MEND/EasyEdit/WISE format: src, alt (the edit target), rephrase, loc/loc_ans, subject, answers."""
    path = Path(path)
    records = []
    for line, item in read_json_records(path):
        f = _Fields(path, line, item)
        loc = f.text("loc", optional=True)
        records.append(Record(
            id=f"zsre:{len(records)}", prompt=f.text("src"), target=f.text("alt"), rephrases=f.texts("rephrase"),
            locality=(Probe(loc, f.text("loc_ans", optional=True)),) if loc else (), subject=f.text("subject"),
            truth=f.text("answers", optional=True), source=f"{path.name}:{line}"))
    return Dataset("zsre", "qa", records, str(path))


def load_counterfact(path: str | os.PathLike) -> Dataset:
    """CounterFact, either EasyEdit's flat records (prompt, target_new, subject, ground_truth, rephrase_prompt,
    locality_prompt, locality_ground_truth) or ROME's original `counterfact.json` (requested_rewrite with a "{}"
    prompt template, paraphrase_prompts, neighborhood_prompts)."""
    path = Path(path)
    records = []
    for line, item in read_json_records(path):
        f = _Fields(path, line, item)
        if "requested_rewrite" in item:
            rewrite = _Fields(path, line, item["requested_rewrite"])
            subject = rewrite.text("subject")
            template = rewrite.text("prompt")
            if "{}" not in template:
                raise rewrite.error("prompt", "a requested_rewrite prompt must contain {} where the subject goes")
            records.append(Record(
                id=f"counterfact:{item.get('case_id', len(records))}", prompt=template.format(subject),
                target=rewrite.text("target_new"), rephrases=f.texts("paraphrase_prompts"),
                locality=tuple(Probe(p) for p in f.texts("neighborhood_prompts")), subject=subject,
                truth=rewrite.text("target_true", optional=True), source=f"{path.name}:{line}"))
            continue
        loc = f.text("locality_prompt", optional=True)
        records.append(Record(
            id=f"counterfact:{item.get('case_id', len(records))}", prompt=f.text("prompt"), target=f.text("target_new"),
            rephrases=f.texts("rephrase_prompt"),
            locality=(Probe(loc, f.text("locality_ground_truth", optional=True)),) if loc else (),
            subject=f.text("subject"), truth=f.text("ground_truth", optional=True), source=f"{path.name}:{line}"))
    return Dataset("counterfact", "completion", records, str(path))


def load_nq(path: str | os.PathLike) -> Dataset:
    """NQ-open: JSON lines of {question, answer: [...]}, or the MEND-style {"questions": [...], "answers": [...]}.
    The records are questions with their (first) gold answer: an upstream set that is never edited."""
    path = Path(path)
    records = []
    if path.suffix == ".jsonl":
        for line, item in read_json_records(path):
            f = _Fields(path, line, item)
            records.append(Record(id=f"nq:{len(records)}", prompt=f.text("question"), target=f.text("answer"),
                                  source=f"{path.name}:{line}"))
    else:
        questions = list(read_json_records(path, key="questions"))
        answers = list(read_json_records(path, key="answers"))
        if len(questions) != len(answers):
            raise DataError(f"{path}: {len(questions)} questions but {len(answers)} answers")
        for (index, question), (_, answer) in zip(questions, answers):
            f = _Fields(path, index, {"question": question, "answer": answer})
            records.append(Record(id=f"nq:{len(records)}", prompt=f.text("question"), target=f.text("answer"),
                                  source=f"{path.name}:item {index}"))
    return Dataset("nq", "qa", records, str(path))


def load_hallucination(path: str | os.PathLike) -> Dataset:
    """Hallucination correction: WISE's format (prompt = the passage so far, target_new = the correct next sentence,
    subject, locality_prompt/locality_ground_truth) or KnowEdit's WikiBio (text, labels, concept, locality)."""
    path = Path(path)
    records = []
    for line, item in read_json_records(path):
        f = _Fields(path, line, item)
        if "text" in item and "labels" in item:  # KnowEdit / GRACE item format
            probes = []
            locality = item.get("locality") or {}
            if not isinstance(locality, dict):
                raise f.error("locality", "expected an object of probe lists")
            for group in locality.values():
                for probe in group if isinstance(group, list) else []:
                    p = _Fields(path, line, probe)
                    probes.append(Probe(p.text("prompt"), p.text("ground_truth", optional=True)))
            records.append(Record(id=f"wikibio:{len(records)}", prompt=f.text("text"), target=f.text("labels"),
                                  locality=tuple(probes), subject=f.text("concept", optional=True),
                                  source=f"{path.name}:{line}"))
            continue
        loc = f.text("locality_prompt", optional=True)
        records.append(Record(
            id=f"hallucination:{len(records)}", prompt=f.text("prompt"), target=f.text("target_new"),
            locality=(Probe(loc, f.text("locality_ground_truth", optional=True)),) if loc else (),
            subject=f.text("subject", optional=True), source=f"{path.name}:{line}"))
    return Dataset("hallucination", "hallucination", records, str(path))


def load_scotus(path: str | os.PathLike) -> Dataset:
    """SCOTUS in the LexGLUE/FairLex format: JSON lines of {"text": document, "label": issue-area index}.

    Classification editing: the document is the prompt and the label (as a string, a label of the classifier) is the
    target. Locality for classification is measured on an upstream split that is never edited."""
    path = Path(path)
    records = []
    for line, item in read_json_records(path):
        f = _Fields(path, line, item)
        label = item.get("label")
        if isinstance(label, bool) or not isinstance(label, (int, str)) or str(label).strip() == "":
            raise f.error("label", f"expected the class index (an integer), got {label!r}")
        records.append(Record(id=f"scotus:{len(records)}", prompt=f.text("text"), target=str(label),
                              source=f"{path.name}:{line}"))
    return Dataset("scotus", "classification", records, str(path))


def load_concepts(path: str | os.PathLike) -> list[str]:
    """GRACE's concept list: one person name a line (the subjects of the SelfCheckGPT passages)."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    return [n for n in names if n]


# name -> (loader, default file under the data directory)
DATASETS: dict[str, tuple[Callable[[Path], Dataset], str]] = {
    "zsre": (load_zsre, "zsre/zsre_mend_eval.json"),
    "counterfact": (load_counterfact, "counterfact/counterfact-edit-5000.json"),
    "nq": (load_nq, "nq/NQ-open.dev.jsonl"),
    "hallucination": (load_hallucination, "hallucination/wise_hallucination-edit.json"),
    # WISE's other passages, never edited: the hallucination task's other biographies (locality, ARR)
    "hallucination-extra": (load_hallucination, "hallucination/wise_hallucination-train.json"),
    "wikibio": (load_hallucination, "hallucination/knowedit_wikibio-test-all.json"),
    "scotus": (load_scotus, "scotus/test.jsonl"),
}


def load_dataset(name: str, data: str | os.PathLike | None = None) -> Dataset:
    """Load a benchmark by name. `data` is a file of that benchmark's format or a directory laid out like
    `shared/data` (default: `data_dir()`)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    loader, relative = DATASETS[name]
    if data is not None and Path(data).is_file():
        return loader(Path(data))
    path = data_dir(data) / relative
    if not path.is_file():
        raise DataError(f"{name}: {path} does not exist; pass --data with the file (or the directory holding "
                        f"{relative})")
    return loader(path)
