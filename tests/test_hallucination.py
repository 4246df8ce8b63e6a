"""The hallucination task (SoLA's Table 1, third column): an edit is a passage so far -> the correct next sentence;
ERR, TRR and ARR are perplexities, each beside the base model's; the never-edited passages of WISE's other file are
the same biographies at other points ("subject" probes) or other biographies ("relation" probes)."""

from __future__ import annotations

import json

import pytest

from sola.data import load_dataset
from sola.eval import BenchSpec, run
from sola.eval.items import build_items
from sola.eval.study import write_study


def passage(name: str, sentence: str, after: str) -> dict:
    """Short texts: the tiny test model reads 64 positions of a near-character-level tokenizer."""
    return {"prompt": f"{name}: {sentence}", "target_new": after, "subject": name,
            "locality_prompt": "Maps of the", "locality_ground_truth": " world"}


@pytest.fixture
def hallucination_data(tmp_path):
    edits = [passage("ada", "a pianist.", "Riga."), passage("ada", "a pianist. Riga.", "Vienna."),
             passage("carl", "a chemist.", "Lima.")]
    others = [passage("ada", "on tour.", "Albums."), passage("dora", "a sculptor.", "Oslo."),
              passage("emil", "a runner.", "Medal.")]
    root = tmp_path / "data" / "hallucination"
    root.mkdir(parents=True)
    (root / "wise_hallucination-edit.json").write_text(json.dumps(edits))
    (root / "wise_hallucination-train.json").write_text(json.dumps(others))
    return tmp_path / "data"


def test_never_edited_passages_are_spread_once_each_by_whose_biography_they_are(hallucination_data):
    dataset = load_dataset("hallucination", hallucination_data)
    passages = load_dataset("hallucination-extra", hallucination_data).records
    items = build_items(dataset, [], 0, 1, passages)
    subject = [(i, p.prompt) for i, it in enumerate(items) for p in it.probes["subject"]]
    relation = [(i, p.prompt) for i, it in enumerate(items) for p in it.probes["relation"]]
    assert subject == [(0, passages[0].prompt)]  # Ada's other passage: an edit of Ada
    assert [p for _, p in relation] == [passages[1].prompt, passages[2].prompt]  # nobody edits Dora or Emil
    assert all(len(it.probes["unrelated"]) == 1 for it in items)  # WISE's upstream text


def test_bench_reports_err_trr_arr_perplexities_beside_the_base_models(tmp_path, tiny_dir, hallucination_data):
    spec = BenchSpec(method="sola", dataset="hallucination", edits=3, data=str(hallucination_data),
                     model=str(tiny_dir("llama")), key="mean_pool", threshold=1e-3, checkpoints=[], batch_size=2,
                     max_new_tokens=12, config={"learning_rate": 0.05, "max_steps": 200})
    results = run(spec, tmp_path / "run", progress=False)
    paper = results["metrics"]["all"]["paper"]
    assert paper["ARR_sentences"] == 3
    for name in ("ERR_ppl", "ERR_ppl_base", "TRR_ppl", "TRR_ppl_base", "ARR_ppl", "ARR_ppl_base"):
        assert paper[name] > 1.0, name
    assert paper["ERR_ppl"] < paper["ERR_ppl_base"]  # the edits taught their sentences
    # threshold 1e-3 on mean-pooled states: only the edit passages themselves route, so the never-edited text is
    # unchanged and reads the base model's perplexity exactly
    assert paper["ARR_ppl"] == pytest.approx(paper["ARR_ppl_base"]) and paper["TRR_ppl"] == paper["TRR_ppl_base"]
    routing = results["metrics"]["all"]["routing"]
    assert routing["prompt_own_edit"] == 1.0 and routing["subject_activated"] == 0.0
    # perplexity is this task's locality: probes that carry their sentence are read, not generated
    base = json.loads((tmp_path / "run" / "base.json").read_text())
    assert not any(base["generated"]) and set(base["answers"]) == {""}
    assert all(v is None for k, v in results["metrics"]["all"]["autoregressive"].items() if k.startswith("loc_"))
    assert "ERR PPL (edited sentences)" in (tmp_path / "run" / "results.md").read_text()
    doc = tmp_path / "docs" / "results.md"
    write_study([tmp_path / "run"], doc)
    row = next(line for line in doc.read_text().split("## Hallucination correction")[1].splitlines()
               if line.startswith("| sola"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "3" and cells[2] == f"{paper['ERR_ppl']:.3f} ({paper['ERR_ppl_base']:.3f})"
    assert cells[7] == "1.000" and cells[-1] == "15.15 / 1.01 / 7.35"  # the paper's SoLA row beside ours


def test_a_corrected_sentence_is_generated_whole_whatever_the_answer_cap(tmp_path, tiny_dir, hallucination_data):
    """The corrections are sentences, longer than the cap meant for short answers (here 2 tokens): the edits' own
    answers get room for their target, so generated exact match can see the whole sentence."""
    spec = BenchSpec(method="sola", dataset="hallucination", edits=3, data=str(hallucination_data),
                     model=str(tiny_dir("llama")), key="mean_pool", threshold=1e-3, checkpoints=[], batch_size=2,
                     max_new_tokens=2, config={"learning_rate": 0.05, "max_steps": 200})
    results = run(spec, tmp_path / "run", progress=False)
    rows = results["rows"]
    assert [r["rel_answer"] for r in rows] == ["Riga.", "Vienna.", "Lima."]
    assert results["metrics"]["all"]["autoregressive"]["rel_em"] == 1.0
    edited = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    assert [r["es_answer"] for r in edited] == ["Riga.", "Vienna.", "Lima."]  # ES right after each edit, too


@pytest.mark.parametrize("method", ["elder", "grace", "melo", "lora-ft"])
def test_every_baseline_runs_the_hallucination_task(tmp_path, tiny_dir, hallucination_data, method):
    """`sola bench --dataset hallucination` runs every method: each reports ERR / TRR / ARR beside the base model's,
    and a method that routes leaves the upstream text as the base model reads it when nothing reaches an edit."""
    config = {"max_steps": 30} if method == "grace" else {"learning_rate": 0.05, "max_steps": 100}
    threshold = {"lora-ft": None, "elder": 1}.get(method, 1e-3)
    spec = BenchSpec(method=method, dataset="hallucination", edits=3, data=str(hallucination_data),
                     model=str(tiny_dir("llama")), threshold=threshold, checkpoints=[], batch_size=2,
                     max_new_tokens=8, config=config)
    results = run(spec, tmp_path / "run", progress=False)
    paper = results["metrics"]["all"]["paper"]
    assert results["dataset"] == "hallucination" and paper["ARR_sentences"] == 3
    for name in ("ERR_ppl", "ERR_ppl_base", "TRR_ppl", "TRR_ppl_base", "ARR_ppl", "ARR_ppl_base"):
        assert paper[name] > 1.0, name
    if method in ("grace", "melo"):  # radius 1e-3: the upstream text never reaches an edit
        assert paper["TRR_ppl"] == pytest.approx(paper["TRR_ppl_base"], rel=1e-5)
