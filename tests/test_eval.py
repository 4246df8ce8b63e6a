"""The evaluation harness: metrics on hand-made cases, loaders and their errors, probes, and tiny end-to-end runs."""

from __future__ import annotations

import json
import math

import pytest
from conftest import tiny_config

from sola import DataError, EditConfig, Editor, InvalidEditError, batching
from sola.data import load_counterfact, load_dataset, load_nq, load_scotus, load_zsre
from sola.data.probes import collisions, conflicts, latest_targets, relation_groups, subject_probes, template_of
from sola.data.records import Probe, Record
from sola.eval import BenchSpec, compare, run
from sola.eval import metrics as M
from sola.eval.study import label as study_label
from sola.eval.study import write_study
from sola.routing.subjects import SubjectIndex, relation_text

# -- metrics --------------------------------------------------------------------------------------------------------


def test_token_accuracy_and_agreement():
    assert M.token_accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert M.agreement([5, 6], [5, 6]) == 1.0
    with pytest.raises(ValueError):
        M.token_accuracy([1], [1, 2])


def test_exact_match_normalises_case_punctuation_and_articles():
    assert M.exact_match("The Danube.", "danube") == 1.0
    assert M.exact_match("Danube river", "Danube") == 0.0


def test_token_f1_known_values():
    assert M.token_f1("Wyndham Lewis", "Wyndham Lewis") == 1.0
    assert M.token_f1("the architect Wyndham Lewis", "Wyndham Lewis") == pytest.approx(0.8)  # p=2/3, r=1
    assert M.token_f1("Kohn Pedersen Fox", "Wyndham Lewis") == 0.0
    assert M.token_f1("", "") == 1.0


def test_perplexity_is_token_weighted():
    assert M.perplexity([math.log(4.0)]) == pytest.approx(4.0)
    assert M.perplexity([0.0, math.log(8.0)], [3, 1]) == pytest.approx(8.0 ** 0.25)


def test_mean_skips_missing_and_quantiles_are_nearest_rank():
    assert M.mean([1.0, None, 0.0]) == 0.5
    assert M.mean([None]) is None
    assert M.quantiles(list(range(100)), (0.5, 0.99)) == {"q50": 50, "q99": 99}


# -- loaders ----------------------------------------------------------------------------------------------------------


def _write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))
    return path


ZSRE = [
    {"src": "Who designed Toodyay Fire Station?", "alt": " Wyndham Lewis", "rephrase": "Toodyay Fire Station was "
     "designed by whom?", "loc": "nq question: who wrote hamlet", "loc_ans": "Shakespeare", "answers": ["x"],
     "subject": "Toodyay Fire Station"},
    {"src": "Who designed Toodyay Fire Station?", "alt": "Kohn Pedersen Fox", "rephrase": "Who was the architect of "
     "Toodyay Fire Station?", "loc": "nq question: what colour is the sky", "loc_ans": "blue", "answers": ["x"],
     "subject": "Toodyay Fire Station"},
    {"src": "Which river flows through Cairo?", "alt": "the Danube", "rephrase": "What river runs through Cairo?",
     "loc": "nq question: who painted the mona lisa", "loc_ans": "Leonardo", "answers": ["Nile"], "subject": "Cairo"},
]


def test_zsre_loader_reads_records_and_strips_targets(tmp_path):
    dataset = load_zsre(_write(tmp_path / "zsre" / "zsre_mend_eval.json", ZSRE))
    first = dataset.records[0]
    assert (first.prompt, first.target, first.subject) == (ZSRE[0]["src"], "Wyndham Lewis", "Toodyay Fire Station")
    assert first.rephrases == (ZSRE[0]["rephrase"],)
    assert first.locality == (Probe("nq question: who wrote hamlet", "Shakespeare"),)
    assert dataset.kind == "qa" and len(dataset) == 3


def test_malformed_record_names_file_line_and_field(tmp_path):
    broken = [dict(ZSRE[0]), {k: v for k, v in ZSRE[2].items() if k != "alt"}]
    path = _write(tmp_path / "zsre.json", broken)
    line = path.read_text().splitlines().index("  \"src\": \"Which river flows through Cairo?\",")  # 0-based
    with pytest.raises(DataError) as err:
        load_zsre(path)
    message = str(err.value)
    assert "zsre.json" in message and "field 'alt'" in message and f"line {line}" in message  # record starts above


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "nq.jsonl"
    path.write_text('{"question": "a", "answer": ["b"]}\n{"question": \n')
    with pytest.raises(DataError, match="line 2"):
        load_nq(path)


def test_counterfact_flat_and_rome_formats(tmp_path):
    flat = _write(tmp_path / "cf.json", [{"case_id": 7, "prompt": "The mother tongue of Danielle Darrieux is",
                                          "target_new": "English", "subject": "Danielle Darrieux",
                                          "ground_truth": "French", "rephrase_prompt": "Danielle Darrieux speaks",
                                          "locality_prompt": "Michel Rocard is a native speaker of",
                                          "locality_ground_truth": "French"}])
    rome = _write(tmp_path / "counterfact.json", [{"case_id": 0, "requested_rewrite": {
        "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "target_new": {"str": "English"},
        "target_true": {"str": "French"}}, "paraphrase_prompts": ["a. Danielle Darrieux speaks", "b"],
        "neighborhood_prompts": ["Michel Rocard is a native speaker of"]}])
    a, b = load_counterfact(flat).records[0], load_counterfact(rome).records[0]
    assert a.id == "counterfact:7" and a.truth == "French" and a.locality[0].answer == "French"
    assert b.prompt == a.prompt and b.target == "English" and len(b.rephrases) == 2
    bad = _write(tmp_path / "bad.json", [{"requested_rewrite": {"prompt": "no slot", "subject": "S",
                                                                "target_new": {"str": "x"}}}])
    with pytest.raises(DataError, match="field 'prompt'"):
        load_counterfact(bad)


def test_nq_mendstyle_and_load_dataset_by_directory(tmp_path):
    path = tmp_path / "nq.json"
    path.write_text(json.dumps({"questions": ["Who wrote Hamlet?"], "answers": ["Shakespeare"]}))
    assert load_nq(path).records[0].target == "Shakespeare"
    _write(tmp_path / "data" / "zsre" / "zsre_mend_eval.json", ZSRE)
    assert len(load_dataset("zsre", tmp_path / "data")) == 3
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("squad", tmp_path / "data")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("counterfact", tmp_path / "data")


# SCOTUS cannot be downloaded here. This fixture is made up (clearly not court text) in the LexGLUE format:
# JSON lines of {"text": ..., "label": issue-area index}.
SCOTUS_FIXTURE = [{"text": "FIXTURE document one about a tax dispute.", "label": 7},
                  {"text": "FIXTURE document two about a search warrant.", "label": 1}]


def test_scotus_loader_and_label_errors(tmp_path):
    path = tmp_path / "scotus" / "test.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(json.dumps(r) for r in SCOTUS_FIXTURE) + "\n")
    dataset = load_scotus(path)
    assert dataset.kind == "classification" and [r.target for r in dataset.records] == ["7", "1"]
    path.write_text(json.dumps({"text": "FIXTURE", "label": None}) + "\n")
    with pytest.raises(DataError, match="line 1, field 'label'"):
        load_scotus(path)


def test_classification_editing_on_tiny_bert_with_a_scotus_record(tmp_path, tiny_dir):
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in SCOTUS_FIXTURE) + "\n")
    editor = Editor.from_pretrained(tiny_dir("bert"), config=tiny_config(tiny_dir))
    labels = sorted(editor.task.labels().values())
    record = load_scotus(path).records[0]
    target = str(labels[(labels.index(int(editor.score([record.prompt], ["0"])[0].predicted[0])) + 1) % len(labels)])
    editor.edit(record.prompt, target)
    assert editor.score([record.prompt], [target])[0].accuracy == 1.0  # accuracy metric: the label is predicted
    assert editor.generate(record.prompt) == editor.model.config.id2label[int(target)]


# -- what the data holds ----------------------------------------------------------------------------------------------


def _record(i, prompt, target, subject, locality=()):
    return Record(f"r{i}", prompt, target, subject=subject, locality=tuple(Probe(p) for p in locality))


def test_conflicts_are_same_subject_different_target():
    records = [_record(0, "Who designed A?", "Lewis", "A"), _record(1, "Who designed A?", "Fox", "A"),
               _record(2, "Who designed A?", "the Lewis", "A"), _record(3, "Where is B?", "Paris", "B")]
    found = conflicts(records)
    assert set(found) == {"r0", "r1", "r2"} and found["r0"] == ["r1"]  # "the Lewis" normalises to "Lewis"


def test_collisions_find_probes_naming_another_edits_subject():
    records = [_record(0, "Bordeaux is a twin city of", "Rome", "Bordeaux"),
               _record(1, "Lyon is a twin city of", "Oslo", "Lyon", locality=["Bordeaux is a twin city of"])]
    assert [(c.record, c.edit) for c in collisions(records)] == [("r1", "r0")]


def test_subject_probes_use_templates_of_other_relations():
    records = [_record(0, "The mother tongue of Ann is", "French", "Ann"),
               _record(1, "Bob is a native speaker of", "French", "Bob"),
               _record(2, "Cid was born in", "Paris", "Cid"), _record(3, "Dee works as a", "nurse", "Dee")]
    groups = relation_groups(records)
    assert groups[template_of(records[0])] == groups[template_of(records[1])]  # both answer a language
    probes = {p.prompt for p in subject_probes(records[0], records, groups, count=5)}
    assert probes == {"Ann was born in", "Ann works as a"}


# -- subject-aware routing ---------------------------------------------------------------------------------------------


def test_relation_text_masks_the_subject_in_its_clause():
    assert relation_text("Noise first. Edwin of Northumbria is affiliated with", "Edwin of Northumbria") == \
        "something is affiliated with"
    index = SubjectIndex()
    index.add("Apple A5", 1)
    index.add("Lyon", 2)
    assert index.find("People in Lyon's twin city like apple  a5") == {"lyon": [2], "apple a5": [1]}
    assert index.find("Lyonnais cuisine") == {}
    index.remove(2)
    assert index.find("Lyon") == {}


def test_subject_keys_route_only_inputs_naming_the_subject(make_editor, tiny_dir):
    editor = make_editor("llama", key="subject", encoder=str(tiny_dir("encoder")), threshold=1e-3)
    with pytest.raises(InvalidEditError, match="does not occur"):
        editor.edit("Who founded Acme?", "Jane Roe", subject="Initech")
    edit = editor.edit("Who founded Acme?", "Jane Roe", subject="Acme")
    assert editor.route("Who founded Acme?").edit_id == edit.id
    assert editor.route("Noise first. Who founded acme?").edit_id == edit.id  # same clause, other case
    assert editor.route("Who founded Initech?") is None  # same relation, other subject: not a candidate
    assert editor.nearest("Who founded Initech?") is None


def test_subject_keys_reach_an_edit_without_a_subject_by_its_whole_prompt(make_editor, tiny_dir, tmp_path):
    """key="subject" with an edit made without a subject: that edit is reached as with key="encoder" (the whole
    input's embedding, under unnamed_threshold); edits that name a subject keep their gate; rollback and reopening
    the store keep both kinds apart."""
    from conftest import tiny_config
    from test_contract import assert_bit_identical, probe_logits

    config = tiny_config(tiny_dir, key="subject", threshold=1e-3, unnamed_threshold=1e-3, infer_subject=False)
    editor = Editor.from_pretrained(tiny_dir("llama"), config=config, store=tmp_path / "store")
    probes = ["Who founded Acme?", "Which river flows through Cairo?", "Who founded Initech?"]
    base = probe_logits(editor, probes)
    named = editor.edit("Who founded Acme?", "Jane Roe", subject="Acme")
    unnamed = editor.edit("Which river flows through Cairo?", "the Danube")
    assert unnamed.subject is None
    found = editor.route("Which river flows through Cairo?")
    assert found.edit_id == unnamed.id and abs(found.distance) < 1e-6
    assert editor.route("Who founded Acme?").edit_id == named.id
    assert editor.route("Who founded Initech?") is None  # neither names Acme nor is the unnamed prompt
    assert editor.generate("Which river flows through Cairo?") == "the Danube"
    edited = probe_logits(editor, probes)
    reopened = Editor.from_pretrained(tiny_dir("llama"), store=tmp_path / "store")
    assert reopened.route("Which river flows through Cairo?") == found
    assert_bit_identical(probe_logits(reopened, probes), edited)
    editor.rollback(unnamed.id)
    assert editor.route("Which river flows through Cairo?") is None
    editor.rollback(named.id)
    assert_bit_identical(probe_logits(editor, probes), base)


def test_an_edit_without_a_subject_is_gated_by_the_name_in_its_prompt(tiny_dir, tmp_path):
    """The README's case: "Who is the CEO of Zelkova Pumps?" edited without a subject must not answer for another
    company. The subject is read from the prompt and shown; aliases and shortened names reach the edit; all of it
    survives reopening the store, and rollback removes it."""
    from conftest import tiny_config

    config = tiny_config(tiny_dir, key="subject", threshold=0.6)
    editor = Editor.from_pretrained(tiny_dir("llama"), config=config, store=tmp_path / "store")
    ceo = editor.edit("Who is the CEO of Zelkova Pumps?", "Ada Brandt")
    assert (ceo.subject, ceo.subject_inferred) == ("Zelkova Pumps", True)
    founder = editor.edit("Who founded Quillon Robotics?", "Mara Vey", subject="Quillon Robotics",
                          aliases=["QR Labs"])
    assert (founder.subject_inferred, founder.aliases) == (False, ("QR Labs",))
    expected = {"Who is the CEO of Zelkova Pumps?": ceo.id, "Who is the CEO of Birch Valves?": None,
                "Who founded QR Labs?": founder.id, "Who founded Quillon?": founder.id,
                "Who founded Birch Valves?": None}
    for reopened in (editor, Editor.from_pretrained(tiny_dir("llama"), store=tmp_path / "store")):
        for prompt, edit_id in expected.items():
            route = reopened.route(prompt)
            assert (route.edit_id if route else None) == edit_id, prompt
        assert reopened.get(ceo.id).subject_inferred and reopened.get(founder.id).aliases == ("QR Labs",)
    why = editor.explain("Who is the CEO of Birch Valves?")
    assert (why.routed, why.edit_id, why.reason) == (False, None, "names no edited subject")
    why = editor.explain("Who is the CEO of Zelkova Pumps?")
    assert why.routed and why.edit_id == ceo.id and why.distance < why.threshold == 0.6
    editor.rollback(founder.id)
    assert editor.route("Who founded QR Labs?") is None
    with pytest.raises(InvalidEditError, match="aliases"):
        editor.edit("what is the boiling point of water", "100 C", aliases=["H2O"])


def test_edits_made_before_subjects_were_read_are_still_skipped_as_committed(tiny_dir, tmp_path):
    """A store whose edits were made without subjects (subject None), then the same file again with the subject read
    from each prompt: skip_committed recognises them, nothing is trained twice."""
    from conftest import tiny_config

    config = tiny_config(tiny_dir, key="subject", threshold=0.6, infer_subject=False)
    old = Editor.from_pretrained(tiny_dir("llama"), config=config, store=tmp_path / "store")
    requests = [{"prompt": "Who is the CEO of Zelkova Pumps?", "target": "Ada Brandt"}]
    (made,) = old.edit_many(requests)
    assert made.subject is None
    reopened = Editor.from_pretrained(tiny_dir("llama"), store=tmp_path / "store")
    reopened.config = reopened.config.replace(infer_subject=True)  # as a store made before the field existed
    seen = []
    reopened.edit_many(requests, skip_committed=True, on_result=lambda i, edit, status: seen.append(status))
    assert seen == ["skipped"] and len(reopened.edits()) == 1
    with pytest.raises(InvalidEditError, match="key='subject'"):
        Editor.from_pretrained(tiny_dir("llama"), config=tiny_config(tiny_dir)).edit(
            "Who founded Acme?", "Jane Roe", subject="Acme", aliases=["Acme Corp"])


def test_explain_says_why_an_input_runs_on_the_base_model(make_editor):
    editor = make_editor("llama")
    assert editor.explain("Who founded Acme?").reason == "no edits"
    edit = editor.edit("Who founded Acme?", "Jane Roe")
    assert str(editor.explain("Who founded Acme?")).startswith(f"edit {edit.id}, distance ")
    far = editor.explain("Where is the Eiffel Tower?")
    assert not far.routed and far.edit_id == edit.id and far.distance >= far.threshold and far.reason == "too far"
    assert f"nearest edit {edit.id}" in str(far)
    with editor.disabled():
        assert editor.explain("Who founded Acme?").reason == "editing disabled"


def test_subject_key_calibration_sets_the_threshold_of_edits_without_a_subject(make_editor, tiny_dir):
    editor = make_editor("llama", key="subject", encoder=str(tiny_dir("encoder")), threshold=0.5,
                         infer_subject=False)
    editor.edit("Which river flows through Cairo?", "the Danube")
    unrelated = [f"Unrelated question number {i}?" for i in range(40)]
    found = editor.calibrate_threshold(unrelated, 0.05)
    assert editor.config.unnamed_threshold == found and editor.config.threshold == 0.5
    routed = sum(editor.route(q) is not None for q in unrelated)
    assert routed <= 0.05 * len(unrelated)


# -- the runner -----------------------------------------------------------------------------------------------------


def _spec(tiny_dir, data, **changes):
    fields = dict(dataset="zsre", edits=5, data=str(data), model=str(tiny_dir("llama")), key="mean_pool",
                  checkpoints=[2], batch_size=2, max_new_tokens=12,
                  config={"learning_rate": 0.05, "max_steps": 200, "threshold": 1e-3})
    fields.update(changes)
    return BenchSpec(**fields)


def test_tiny_end_to_end_run_writes_the_report(tmp_path, tiny_dir, tiny_data):
    results = run(_spec(tiny_dir, tiny_data), tmp_path / "run", progress=False)
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    for field in ("spec", "config", "model", "code_version", "metrics", "checkpoints", "rows", "cost", "timings",
                  "findings", "subsets"):
        assert field in on_disk
    assert on_disk["subsets"] == {"all": 5, "conflict_free": 3, "latest_wins": 5}  # the two Acme records conflict
    assert [c["edits"] for c in on_disk["checkpoints"]] == [2, 5]
    summary = results["metrics"]["all"]
    # The same question is edited twice (Acme). The bench keeps every record a new fact by default (the papers'
    # protocol): both keys are at distance 0 and the older edit keeps answering, so the second Acme edit fails right
    # away (ES) and at the end; read "latest wins", the first Acme record fails instead.
    assert summary["paper"]["ES"] == pytest.approx(0.8) and summary["teacher_forced"]["rel"] == pytest.approx(0.8)
    assert results["metrics"]["conflict_free"]["teacher_forced"]["rel"] == 1.0
    assert on_disk["subsets"]["latest_wins"] == 5 and on_disk["findings"]["read_against_a_later_target"] == 1
    assert results["metrics"]["latest_wins"]["autoregressive"]["rel_em"] == pytest.approx(0.6)
    assert on_disk["findings"]["edits_that_superseded"] == 0
    for section in ("teacher_forced", "autoregressive", "paper", "routing"):
        for name, value in summary[section].items():
            if isinstance(value, float):
                assert 0.0 <= value <= 1.0, (section, name, value)
    assert summary["teacher_forced"]["loc_unrelated"] == 1.0  # threshold 1e-3: NQ questions never route
    assert len(on_disk["rows"]) == 5 and {"rel_tf", "gen_em", "loc_subject_ar", "routes"} <= set(on_disk["rows"][0])
    assert (tmp_path / "run" / "results.md").read_text().startswith("# sola zsre T=5")
    assert (tmp_path / "run" / "distances.png").stat().st_size > 0
    assert "| sola zsre T=5" in compare([tmp_path / "run"])

    # docs/results.md: written from the run directory, which is archived without its rows; the archive alone
    # regenerates the same document (run directories are not committed)
    doc = tmp_path / "docs" / "results.md"
    write_study([tmp_path / "run"], doc)
    archived = tmp_path / "docs" / "runs" / "zsre-sola-mean_pool-5.json"
    assert "rows" not in json.loads(archived.read_text())
    assert (tmp_path / "docs" / "figures" / "zsre-curves.png").stat().st_size > 0
    text = doc.read_text()
    assert "| sola mean_pool (thr 0.001) | 5 | 0.800 |" in text and "### conflict_free (3 records)" in text
    assert "| zsre | sola mean_pool (thr 0.001) | 0.800 |" in text  # the side-by-side table
    write_study([archived], doc)
    assert doc.read_text() == text
    write_study([archived, tmp_path / "run"], doc)  # the same run given twice is shown once
    assert doc.read_text() == text
    assert study_label({**on_disk, "method": "grace", "threshold": {"value": 4.0}}) == "grace (radius 4)"


def test_updates_read_latest_wins(tmp_path, tiny_dir, tiny_data):
    """With supersede="auto" the second Acme edit updates the first: ES is perfect, and every Acme record answers
    the latest target, so the "latest wins" reading is perfect too while the per-record reading fails the first."""
    spec = _spec(tiny_dir, tiny_data, checkpoints=[],
                 config={"learning_rate": 0.05, "max_steps": 200, "threshold": 1e-3, "supersede": "auto"})
    results = run(spec, tmp_path / "run", progress=False)
    assert results["findings"]["edits_that_superseded"] == 1
    assert results["metrics"]["all"]["paper"]["ES"] == 1.0
    assert results["metrics"]["all"]["autoregressive"]["rel_em"] == pytest.approx(0.8)
    assert results["metrics"]["latest_wins"]["autoregressive"]["rel_em"] == 1.0
    assert results["metrics"]["latest_wins"]["teacher_forced"]["rel"] == 1.0


def _metrics(results):
    return json.dumps(results["metrics"], sort_keys=True), json.dumps(results["checkpoints"], sort_keys=True)


def _differences(a, b, path="", tolerance=1e-6):
    """Where two results differ: floats by more than `tolerance`, anything else at all."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if abs(a - b) <= tolerance else [(path, a, b)]
    return [] if a == b else [(path, a, b)]


def test_same_command_twice_gives_the_same_numbers(tmp_path, tiny_dir, tiny_data):
    first = run(_spec(tiny_dir, tiny_data, checkpoints=[]), tmp_path / "a", progress=False)
    second = run(_spec(tiny_dir, tiny_data, checkpoints=[]), tmp_path / "b", progress=False)
    assert _metrics(first) == _metrics(second)


def test_reused_adapters_give_the_same_numbers_as_training(tmp_path, tiny_dir, tiny_data):
    trained = run(_spec(tiny_dir, tiny_data, checkpoints=[]), tmp_path / "trained", progress=False)
    reused = run(_spec(tiny_dir, tiny_data, checkpoints=[], reuse_adapters=str(tmp_path / "trained")),
                 tmp_path / "reused", progress=False)
    assert _metrics(reused) == _metrics(trained)
    assert reused["cost"]["adapters_reused"] and not trained["cost"]["adapters_reused"]


def test_unrouted_locality_probes_read_from_the_base_run_give_the_same_numbers(tmp_path, tiny_dir, tiny_data):
    """SoLA reads a locality probe that no edit is routed to from the base run instead of running it again; the
    numbers (and every probe's answer) must equal running all of them. The relation probes ("Who founded Initech?")
    are other records' edit prompts, so some are routed and some not."""
    full = run(_spec(tiny_dir, tiny_data, full_locality=True), tmp_path / "full", progress=False)
    read = run(_spec(tiny_dir, tiny_data), tmp_path / "read", progress=False)
    assert _metrics(read) == _metrics(full)
    changed = lambda results: [r.get("loc_changed") for r in results["rows"]]  # noqa: E731
    assert changed(read) == changed(full)
    work = read["evaluation"]
    assert work["probes_run"] > 0 and work["probes_read_from_base"] > 0  # both paths were taken
    assert full["evaluation"]["locality"] == "every probe run"


def test_a_run_stopped_between_an_edit_and_its_row_resumes_with_the_same_numbers(tmp_path, tiny_dir, tiny_data):
    """Killed after the store committed an edit but before progress.jsonl got its row (while ES was measured): the
    resumed run measures that edit's ES in the state right after it and goes on."""
    spec = _spec(tiny_dir, tiny_data, checkpoints=[])
    whole = run(spec, tmp_path / "whole", progress=False)
    stopped = run(_spec(tiny_dir, tiny_data, checkpoints=[], edits=3), tmp_path / "stopped", progress=False)
    progress = tmp_path / "stopped" / "progress.jsonl"
    lines = progress.read_text().splitlines(keepends=True)
    progress.write_text("".join(lines[:-1]))  # the third edit is in the store, its row is not
    (tmp_path / "stopped" / "checkpoints.jsonl").unlink()
    (tmp_path / "stopped" / "spec.json").unlink()  # resumed with more edits
    resumed = run(spec, tmp_path / "stopped", progress=False)
    assert stopped["edits"] == 3 and _metrics(resumed) == _metrics(whole)


def test_bad_bench_input_is_one_clear_error(tmp_path, tiny_dir, tiny_data):
    with pytest.raises(Exception, match="has 5 records"):
        run(_spec(tiny_dir, tiny_data, edits=50), tmp_path / "x", progress=False)
    run(_spec(tiny_dir, tiny_data, edits=2, checkpoints=[]), tmp_path / "y", progress=False)
    with pytest.raises(Exception, match="another spec"):
        run(_spec(tiny_dir, tiny_data, edits=3, checkpoints=[]), tmp_path / "y", progress=False)
    with pytest.raises(Exception, match="trained its LoRAs differently"):
        run(_spec(tiny_dir, tiny_data, edits=2, checkpoints=[], reuse_adapters=str(tmp_path / "y"),
                  config={"learning_rate": 0.01, "max_steps": 200, "threshold": 1e-3}), tmp_path / "z",
            progress=False)


def test_config_is_unchanged_by_import_edit_errors(make_editor):
    editor = make_editor("llama")
    edit = editor.edit("Who founded Acme?", "Jane Roe")
    tensors = batching.stored_tensors(editor, edit.id)
    broken = {k: v[..., :1] if "lora_A" in k else v for k, v in tensors.items()}
    with pytest.raises(InvalidEditError, match="right shape"):
        editor.import_edit(edit, broken)
    assert len(editor.edits()) == 1
    copy = editor.import_edit(edit, tensors)
    assert copy.id != edit.id and editor.route("Who founded Acme?") is not None


def test_disabled_gives_base_outputs(make_editor):
    editor = make_editor("llama")
    base = editor.score(["Who founded Acme?"], ["Jane Roe"])[0]
    editor.edit("Who founded Acme?", "Jane Roe")
    with editor.disabled():
        again = editor.score(["Who founded Acme?"], ["Jane Roe"])[0]
    assert again == base and editor.score(["Who founded Acme?"], ["Jane Roe"])[0].exact


def test_batched_generation_matches_one_at_a_time(make_editor):
    editor = make_editor("llama")
    editor.edit("Who founded Acme?", "Jane Roe")
    prompts = ["Who founded Acme?", "What colour is the sky?", "Who wrote Hamlet?"]
    assert editor.generate(prompts, 6, batch_size=3) == editor.generate(prompts, 6)


def test_edit_config_accepts_subject_key():
    assert EditConfig(key="subject").default_threshold() == 0.6


def test_no_locality_measures_only_the_edits(tmp_path, tiny_dir, tiny_data):
    results = run(_spec(tiny_dir, tiny_data, checkpoints=[], locality=False), tmp_path / "run", progress=False)
    summary = results["metrics"]["all"]
    assert summary["teacher_forced"]["rel"] == pytest.approx(0.8) and summary["teacher_forced"]["loc_unrelated"] is None
    assert results["findings"]["probe_counts"] == {"unrelated": 0, "relation": 0, "subject": 0}
    assert "Locality was not measured" in (tmp_path / "run" / "results.md").read_text()


def test_latest_wins_reads_routes_against_the_latest_target():
    """A rephrase of the first Acme record reaches the edit that answers "John Doe" (it superseded "Jane Roe"): wrong
    per record, right when the latest edit of a fact wins. Routes of records without a later target are unchanged."""
    from types import SimpleNamespace

    from sola.eval.evaluator import Evaluator
    from sola.eval.items import Item

    def record(n, subject, target):
        return Record(id=f"r{n}", prompt=f"Who founded {subject}?", target=target,
                      rephrases=(f"Who was the founder of {subject}?",), subject=subject)

    first, other, second = record(0, "Acme", "Jane Roe"), record(1, "Globex", "Hank"), record(2, "Acme", "John Doe")
    items = [Item(r, {"unrelated": [], "relation": [], "subject": []}) for r in (first, other, second)]
    method = SimpleNamespace(score=lambda prompts, targets, batch: [SimpleNamespace(accuracy=1.0) for _ in prompts])
    evaluator = Evaluator(method, items, BenchSpec(dataset="zsre", edits=3), "qa")

    def row(rec, nearest, right):  # as the per-record reading scored them
        return {"record": rec.id, "rel_answer": "John Doe", "gen_answers": ["John Doe"],
                "routes": [{"nearest": nearest, "distance": 0.1, "routed": True, "right_target": right}]}

    rows = [row(first, "r2", False), row(other, "r0", False), row(second, "r2", True)]
    read = evaluator.read_latest(rows, latest_targets([first, other, second]))
    assert [r["routes"][0]["right_target"] for r in read] == [True, False, True]
    assert read[0]["read_against"] == "John Doe" and read[0]["gen_em"] == 1.0
    assert rows[0]["routes"][0]["right_target"] is False  # the per-record reading is left as it was


def test_a_resumed_run_counts_the_time_of_earlier_sessions(tmp_path, tiny_dir, tiny_data, monkeypatch):
    monkeypatch.setattr("sola.eval.runner.code_version", lambda: "0.1.0+aaaaaaa")
    spec = _spec(tiny_dir, tiny_data, checkpoints=[])
    first = run(spec, tmp_path / "run", progress=False)
    assert first["code_versions"] == [{"code": "0.1.0+aaaaaaa", "edits": 5}]
    progress = tmp_path / "run" / "progress.jsonl"
    rows = [json.loads(line) for line in progress.read_text().splitlines()]
    assert [r["wall_s"] for r in rows] == sorted(r["wall_s"] for r in rows) and rows[-1]["wall_s"] > 0
    again = run(spec, tmp_path / "run", progress=False, rescore=True)  # every edit committed: evaluates again
    assert again["metrics"] == first["metrics"]
    assert again["timings"]["resumed_after_edits"] == 5 and again["timings"]["total_s"] > rows[-1]["wall_s"]
    assert "earlier_sessions_unrecorded" not in again["timings"]
    progress.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "wall_s"}) + "\n" for r in rows))
    old = run(spec, tmp_path / "run", progress=False, rescore=True)  # progress from before rows carried their time
    assert old["timings"]["earlier_sessions_unrecorded"] is True
    assert "Wall time >= " in (tmp_path / "run" / "results.md").read_text()
    # which code made which edits of a run that spans commits: said in results.json and results.md
    progress.write_text("".join(json.dumps({**r, "code": "0.1.0+bbbbbbb" if i < 2 else r["code"]}) + "\n"
                                for i, r in enumerate(rows)))
    mixed = run(spec, tmp_path / "run", progress=False, rescore=True)
    assert mixed["code_versions"] == [{"code": "0.1.0+bbbbbbb", "edits": 2}, {"code": "0.1.0+aaaaaaa", "edits": 3}]
    assert "edits made by 0.1.0+bbbbbbb (2), 0.1.0+aaaaaaa (3)" in (tmp_path / "run" / "results.md").read_text()


def test_a_finished_run_returns_its_results_unless_rescored(tmp_path, tiny_dir, tiny_data, monkeypatch, capsys):
    """Re-running a finished run (say, a chain of runs restarted) returns what it wrote and evaluates nothing; with
    --rescore its edits are evaluated again. A results.json cut short while being written does not count."""
    from sola.cli import main

    spec = _spec(tiny_dir, tiny_data, checkpoints=[])
    first = run(spec, tmp_path / "run", progress=False)
    written = (tmp_path / "run" / "results.json").read_text()

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a finished run was evaluated again")

    with monkeypatch.context() as patched:
        patched.setattr("sola.eval.runner.build_method", no_evaluation)
        assert run(spec, tmp_path / "run") == json.loads(written)
        assert "--rescore" in capsys.readouterr().err
        main(["bench", "--model", spec.model, "--data", spec.data, "--edits", str(spec.edits), "--key", spec.key,
              "--checkpoints", "", "--eval-batch-size", str(spec.batch_size), "--max-new-tokens",
              str(spec.max_new_tokens), "--config", json.dumps(spec.config), "--out", str(tmp_path / "run")])
        assert capsys.readouterr().out.strip() == (tmp_path / "run" / "results.md").read_text().strip()
    assert (tmp_path / "run" / "results.json").read_text() == written
    (tmp_path / "run" / "results.json").write_text(written[: len(written) // 2])  # a write cut short
    again = run(spec, tmp_path / "run", progress=False)
    assert again["metrics"] == first["metrics"] and again["timings"]["resumed_after_edits"] == spec.edits
    rescored = run(spec, tmp_path / "run", progress=False, rescore=True)
    assert rescored["metrics"] == first["metrics"] and rescored["timings"] != again["timings"]


def test_alias_probes_and_withheld_subjects_in_a_run(tmp_path, tiny_dir, tiny_data):
    """A record whose subject has a shortened name gets an alias probe (its prompt naming the subject so), scored
    like a rephrase and routed; --withhold-subject makes the edits without subjects, and the subject key then gates on
    the name it reads from each prompt, which reaches the same edits as the data's subjects here."""
    from sola.data import load_dataset as load
    from sola.eval.items import build_items

    path = tiny_data / "zsre" / "zsre_mend_eval.json"
    records = json.loads(path.read_text())
    records[1].update(src="Who founded Zelkova Quillon?", rephrase="Who was the founder of Zelkova Quillon?",
                      subject="Zelkova Quillon")
    path.write_text(json.dumps(records))
    items = build_items(load("zsre", tiny_data), [], seed=0, subject_count=1)
    assert [it.aliases for it in items][:2] == [[], ["Who founded Quillon?"]]
    config = {"learning_rate": 0.05, "max_steps": 200, "threshold": 0.6}
    given = run(_spec(tiny_dir, tiny_data, key="subject", checkpoints=[], config=config), tmp_path / "given",
                progress=False)
    withheld = run(_spec(tiny_dir, tiny_data, key="subject", checkpoints=[], config=config, withhold_subject=True),
                   tmp_path / "withheld", progress=False)
    for results in (given, withheld):
        metrics = results["metrics"]["all"]
        assert metrics["alias_records"] == 1 and metrics["routing"]["alias_own_edit"] == 1.0
        assert metrics["teacher_forced"]["alias"] is not None
    assert withheld["spec"]["withhold_subject"] and study_label(withheld).endswith(", subject withheld")
    assert " + names + shared-word masks + question bank (" in study_label(given)  # apart from the runs before them
    before_bank = {**given, "config": {k: v for k, v in given["config"].items() if k != "relation_check"}}
    assert " + names + shared-word masks (" in study_label(before_bank)
    older = {**given, "config": {k: v for k, v in given["config"].items()
                                 if k not in ("mask_shared_words", "relation_check")}}
    assert " + names (" in study_label(older)
    prefixed = {**given, "config": {**given["config"], "prefix_contexts": 2}}
    assert study_label(prefixed).endswith(", 2 prefix contexts)")
    # every inferred subject is the data's subject here: the same results, up to the last digits of the reported key
    # distances (the prompts are encoded in other batches, and the thread count changes the rounding)
    assert _differences(withheld["metrics"], given["metrics"]) == []
    assert _differences(withheld["checkpoints"], given["checkpoints"]) == []


def test_bench_runs_document_classification_on_a_scotus_format_file(tmp_path, tiny_dir):
    """SCOTUS itself is not available offline; the path a user with the data takes runs end to end on a tiny BERT."""
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"document number {i} about a case", "label": i % 2})
                              for i in range(4)) + "\n")
    spec = BenchSpec(method="sola", dataset="scotus", edits=3, data=str(path), model=str(tiny_dir("bert")),
                     key="mean_pool", threshold=1e-3, checkpoints=[], batch_size=2, max_new_tokens=4,
                     config={"learning_rate": 0.05, "max_steps": 100})
    results = run(spec, tmp_path / "run", progress=False)
    assert results["data"]["kind"] == "classification" and results["edits"] == 3
    assert results["metrics"]["all"]["teacher_forced"]["rel"] == 1.0


def test_evaluation_batches_are_sorted_by_length_within_fixed_windows():
    from sola.eval.evaluator import _grid, _longest_first, _unsorted

    texts = ["a" * n for n in (3, 9, 1, 7, 5, 2, 8, 4, 6, 10, 12, 11)]
    order = _longest_first(texts, window=4)
    assert [len(texts[n]) for n in order] == [9, 7, 3, 1, 8, 5, 4, 2, 12, 11, 10, 6]  # longest first per window
    assert _unsorted(order, [texts[n] for n in order]) == texts  # outputs come back in the caller's order
    span = _grid(6, window=4, total=len(texts))  # a prefix of whole windows is batched as the full list batches it
    assert span == 8 and _longest_first(texts[:span], window=4) == order[:span]
    assert _grid(11, window=4, total=12) == 12 and _grid(0, window=4, total=12) == 0
    # positions (a filtered list keeps its items' windows): items 0, 2 and 5 of window 0, item 9 of window 2
    assert _longest_first(["a", "bbb", "cc", "dddd"], window=4, positions=[0, 2, 5, 9]) == [1, 0, 2, 3]
