from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import save_tiny

from sola import EditConfig, Editor

FAMILIES = ["llama", "gpt2", "t5", "bert"]

# Prompts and targets that exist for every family; the BERT targets are its labels.
EDITS = {
    "causal": [("Who founded Acme?", "Jane Roe"), ("Which river flows through Cairo?", "the Danube")],
    "classification": [("Who founded Acme?", "reversed"), ("Which river flows through Cairo?", "remanded")],
}
UNRELATED = ["The quick brown fox jumps over the lazy dog.", "What colour is the sky?", "Who wrote Hamlet?"]


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="run the contract suite's SoLA cases on this torch device "
                     "(benchmarks/gpu_check.py passes cuda on a GPU machine)")


@pytest.fixture(scope="session")
def device(request) -> str:
    return request.config.getoption("--device")


def edits_for(editor: Editor) -> list[tuple[str, str]]:
    return EDITS["classification" if editor.task.kind == "classification" else "causal"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    cache: dict[tuple[str, int], Path] = {}

    def get(family: str, seed: int = 0) -> Path:
        if (family, seed) not in cache:
            cache[(family, seed)] = save_tiny(family, tmp_path_factory.mktemp(f"{family}{seed}"), seed)
        return cache[(family, seed)]

    return get


def tiny_config(tiny_dir, key: str = "mean_pool", **changes) -> EditConfig:
    """Tiny random models need a larger step; the threshold admits only (near-)identical prompts, because random
    hidden states put unrelated prompts close together."""
    fields = dict(key=key, prompt_format="raw", learning_rate=0.05, max_steps=200, threshold=1e-3)
    if key == "encoder":
        fields["encoder"] = str(tiny_dir("encoder"))
    fields.update(changes)
    return EditConfig(**fields)


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


# A random 2-block T5 has to carry an edit through cross-attention; it needs more rank and steps than the others.
FAMILY_CONFIG = {"t5": dict(rank=8, learning_rate=0.02, max_steps=300)}


@pytest.fixture
def make_editor(tiny_dir):
    def make(family: str = "llama", store=None, seed: int = 0, resident_edits: int | None = 1024,
             skip_damaged: bool = False, **config) -> Editor:
        config = {**FAMILY_CONFIG.get(family, {}), **config}
        return Editor.from_pretrained(tiny_dir(family, seed), config=tiny_config(tiny_dir, **config), store=store,
                                      resident_edits=resident_edits, skip_damaged=skip_damaged)

    return make


@pytest.fixture
def tiny_data(tmp_path):
    """A data directory in the shared layout: five zsRE-format records and some NQ questions."""
    records = [
        {"src": f"Who founded {name}?", "alt": target, "rephrase": f"Who was the founder of {name}?",
         "loc": f"nq question: {question}", "loc_ans": "x", "answers": ["y"], "subject": name}
        for name, target, question in [("Acme", "Jane Roe", "what colour is the sky"),
                                       ("Initech", "Bill Lumbergh", "who wrote hamlet"),
                                       ("Globex", "Hank Scorpio", "how tall is everest"),
                                       ("Umbrella", "Oswell Spencer", "where is the louvre"),
                                       ("Acme", "John Doe", "when did rome fall")]]
    zsre = tmp_path / "data" / "zsre" / "zsre_mend_eval.json"
    zsre.parent.mkdir(parents=True)
    zsre.write_text(json.dumps(records, indent=1))
    nq = tmp_path / "data" / "nq" / "NQ-open.dev.jsonl"
    nq.parent.mkdir()
    nq.write_text("\n".join(json.dumps({"question": f"unrelated question number {i}", "answer": ["a"]})
                            for i in range(60)) + "\n")
    return tmp_path / "data"
