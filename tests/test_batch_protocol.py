"""Edits that arrive in batches (`sola bench --batch-size B`; the baselines' `edit_many`): MELO and ELDER train their
shared modules on the whole batch on the fixed schedule their authors' runner used, the other methods edit in order,
and the harness checks each batch after it is made."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import EDITS, UNRELATED

from sola.errors import ConfigError, SolaError
from sola.eval import BenchSpec, run
from sola.eval.study import write_study
from sola.methods import ElderConfig, ElderEditor, GraceConfig, GraceEditor
from sola.methods.subject_gate import SubjectGate

FIXED = dict(prompt_format="raw", fixed_steps=60, fixed_learning_rate=0.05, fixed_lr_step=30)


def elder(tiny_dir, **changes):
    return ElderEditor.from_pretrained(str(tiny_dir("llama")), config=ElderConfig(**{"epsilon": 1, **FIXED, **changes}))


def logits(editor, prompts):
    return [editor.logits(p) for p in prompts]


def test_elder_trains_a_batch_together_on_the_fixed_schedule_and_keeps_every_rows_code(tiny_dir):
    editor = elder(tiny_dir)
    (p1, t1), (p2, t2) = EDITS["causal"]
    made = editor.edit_many([{"prompt": p1, "target": t1}, {"prompts": [p2, p2 + " Say it:"], "target": t2}])
    assert [e.id for e in made] == ["e1", "e2"] and [e.id for e in editor.edits()] == ["e1", "e2"]
    assert {e.steps for e in made} == {60}  # the fixed schedule, no early stop
    assert len({e.seconds for e in made}) == 1  # each edit's share of the batch's time
    assert [len(editor.codes[e.id]) for e in made] == [1, 2]  # a code per training row
    assert not torch.equal(editor.allocations["e1"], editor.allocations["e2"])  # distinct within the batch
    assert editor.generate(p1, 12) == t1 and editor.generate(p2, 12) == t2
    assert editor.route(p2 + " Say it:").edit_id == "e2"


def test_elder_batch_replay_trains_earlier_edits_with_the_batch_and_keeps_their_codes(tiny_dir, monkeypatch):
    """`replay_edits` (ours) in batch mode: the earlier edits' rows join the batch with their own targets and
    allocations; only the batch's rows get new codes."""
    editor = elder(tiny_dir, replay_edits=1)
    (p1, t1), (p2, t2) = EDITS["causal"]
    editor.edit_many([{"prompts": [p1, p1 + " Say it:"], "target": t1}])
    code_e1 = editor.codes["e1"].clone()
    seen = {}
    fit = editor._fit

    def spy(encoded, targets, wanted, own, earlier, fixed=False):
        seen.update(rows=[p.text for p in encoded], own=own, wanted=wanted.clone(), fixed=fixed)
        return fit(encoded, targets, wanted, own, earlier, fixed)

    monkeypatch.setattr(editor, "_fit", spy)
    editor.edit_many([{"prompt": p2, "target": t2}])
    assert seen["rows"] == [p2, p1, p1 + " Say it:"] and seen["own"] == 1 and seen["fixed"]
    assert torch.equal(seen["wanted"][1], editor.allocations["e1"]) and torch.equal(seen["wanted"][0],
                                                                                    editor.allocations["e2"])
    assert torch.equal(editor.codes["e1"], code_e1) and len(editor.codes["e2"]) == 1
    assert [e.id for e in editor.edits()] == ["e1", "e2"]


def test_edit_many_checks_every_request_before_training_anything(tiny_dir):
    editor = elder(tiny_dir)
    before = logits(editor, UNRELATED)
    with pytest.raises(SolaError, match="request 2"):
        editor.edit_many([{"prompt": "Who founded Acme?", "target": "Jane Roe"}, {"prompt": "Who?", "target": " "}])
    assert editor.edits() == [] and all(torch.equal(a, b) for a, b in zip(logits(editor, UNRELATED), before))


def test_methods_without_batch_training_make_a_batch_in_order(tiny_dir):
    """GRACE's edit_many is its edits one by one, bit for bit."""
    config = GraceConfig(prompt_format="raw", radius=1e-3, max_steps=20)
    batch = GraceEditor.from_pretrained(str(tiny_dir("llama")), config=config)
    batch.edit_many([{"prompt": p, "target": t} for p, t in EDITS["causal"]])
    single = GraceEditor.from_pretrained(str(tiny_dir("llama")), config=config)
    for p, t in EDITS["causal"]:
        single.edit(p, t)
    probes = [p for p, _ in EDITS["causal"]] + UNRELATED
    assert all(torch.equal(a, b) for a, b in zip(logits(batch, probes), logits(single, probes)))


def test_elder_epsilon_follows_the_calibration_questions_as_the_codes_move(tiny_dir, tmp_path):
    editor = elder(tiny_dir, epsilon=12)
    editor.edit(*EDITS["causal"][0])
    questions = UNRELATED + ["Where is the Louvre?", "How tall is Everest?", "What is two plus two?"]
    epsilon = editor.calibrate_threshold(questions, 0.0)
    assert editor.config.epsilon_rate == 0.0 and epsilon == editor.config.epsilon
    assert all(editor.route(q) is None for q in questions)  # rate 0: none of them reaches a code
    assert editor.route(EDITS["causal"][0][0]) is not None or epsilon == 0
    editor.edit(*EDITS["causal"][1])  # the routers moved: epsilon is chosen again
    assert all(editor.route(q) is None for q in questions)
    editor.save(tmp_path / "snap")
    loaded = ElderEditor.load(tmp_path / "snap", model=str(tiny_dir("llama")))
    assert loaded.config.epsilon == editor.config.epsilon and torch.equal(loaded.calibration, editor.calibration)
    assert editor.deferral(questions)["reached"] == 0.0
    with pytest.raises(SolaError, match="at least 2 prompts"):
        editor.calibrate_threshold(questions[:1], 0.0)


def test_bench_batch_protocol_checks_each_batch_and_resumes_inside_it(tmp_path, tiny_dir, tiny_data):
    spec = BenchSpec(method="elder", dataset="zsre", edits=5, data=str(tiny_data), model=str(tiny_dir("llama")),
                     threshold=1, checkpoints=[1, 3], batch_size=2, edit_batch_size=2, max_new_tokens=12,
                     config={"fixed_steps": 30, "fixed_learning_rate": 0.05})
    results = run(spec, tmp_path / "run", progress=False)
    assert results["protocol"]["batch_size"] == 2 and results["protocol"]["name"] == "batches of 2"
    # checkpoints are measured after the batch that reaches them: 1 -> after 2 edits, 3 -> after 4, and the end
    assert [c["edits"] for c in results["checkpoints"]] == [2, 4, 5]
    rows = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    assert [r["steps"] for r in rows] == [30] * 5  # the last batch holds one edit: still the batch schedule
    assert [r["edit"] for r in rows] == ["e1", "e2", "e3", "e4", "e5"]
    # the snapshot holds the 5 edits but only 3 rows were written: the missing rows are measured in the state the
    # snapshot holds, nothing is trained again, and the final evaluation is the same
    stopped = tmp_path / "stopped"
    shutil.copytree(tmp_path / "run", stopped)
    (stopped / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    (stopped / "results.json").unlink()  # written only at the end of a run
    again = run(spec, stopped, progress=False)
    resumed = [json.loads(line) for line in (stopped / "progress.jsonl").read_text().splitlines()]
    assert [r["edit"] for r in resumed] == [r["edit"] for r in rows] and resumed[3]["steps"] == 30
    for reading, metric in (("teacher_forced", "rel"), ("autoregressive", "rel_em"), ("teacher_forced", "gen")):
        assert again["metrics"]["all"][reading][metric] == results["metrics"]["all"][reading][metric]
    # results.md names the protocol and has a protocols section; the archive's name says it too
    doc = tmp_path / "docs" / "results.md"
    write_study([tmp_path / "run"], doc)
    text = doc.read_text()
    assert "## Protocols" in text and "| zsre | elder | batches of 2 |" in text
    assert [p.name for p in (tmp_path / "docs" / "runs").glob("*.json")] == ["zsre-elder-thr1-b2-5.json"]


def test_sola_batches_go_through_edit_many_and_bad_batch_sizes_are_refused(tmp_path, tiny_dir, tiny_data):
    common = dict(method="sola", dataset="zsre", edits=4, data=str(tiny_data), model=str(tiny_dir("llama")),
                  key="mean_pool", threshold=1e-3, checkpoints=[], batch_size=2, max_new_tokens=12,
                  config={"learning_rate": 0.05, "max_steps": 200})
    batched = run(BenchSpec(**common, edit_batch_size=4), tmp_path / "batched", progress=False)
    single = run(BenchSpec(**common), tmp_path / "single", progress=False)
    assert batched["protocol"]["batch_size"] == 4 and single["protocol"]["name"] == "sequential"
    # each edit its own LoRA either way: the same answers
    assert [r.get("rel_answer") for r in batched["rows"]] == [r.get("rel_answer") for r in single["rows"]]
    assert batched["metrics"]["all"]["teacher_forced"]["rel"] == single["metrics"]["all"]["teacher_forced"]["rel"]
    with pytest.raises(ConfigError, match="--batch-size 0"):
        run(BenchSpec(**common, edit_batch_size=0), tmp_path / "bad", progress=False)


def test_melo_batches_train_one_new_block_each_and_route_through_its_vector_database(tiny_dir, tmp_path):
    from sola.methods import MeloConfig, MeloEditor
    from sola.methods.snapshot import RollbackNotSupportedError

    editor = MeloEditor.from_pretrained(str(tiny_dir("llama")), config=MeloConfig(radius=1e-3, **FIXED))
    before = logits(editor, UNRELATED)
    made = editor.edit_many([{"prompt": p, "target": t} for p, t in EDITS["causal"]])
    assert {e.steps for e in made} == {60} and editor.info()["blocks"] == 1
    assert editor.info()["clusters"] == 2 and editor.db.block_of == {"e1": 0, "e2": 0}
    for p, t in EDITS["causal"]:
        assert editor.generate(p, 12) == t and editor.route(p) is not None
    for text, base in zip(UNRELATED, before):  # outside every radius: the base model, bit for bit
        assert editor.route(text) is None and torch.equal(editor.logits(text), base)
    with pytest.raises(RollbackNotSupportedError, match="together with e2"):
        editor.rollback("e1")
    with pytest.raises(ConfigError, match="edited in batches"):
        editor.edit("Who wrote Hamlet?", "Marlowe")
    editor.save(tmp_path / "snap")
    loaded = MeloEditor.load(tmp_path / "snap", model=str(tiny_dir("llama")))
    probes = [p for p, _ in EDITS["causal"]] + UNRELATED
    assert all(torch.equal(a, b) for a, b in zip(logits(loaded, probes), logits(editor, probes)))
    assert loaded.db.labels == editor.db.labels and loaded.batches == 1


def test_melo_vector_database_joins_same_answers_and_splits_conflicting_ones():
    from sola.methods.vector_database import NO_BLOCK, VectorDatabase

    db = VectorDatabase(init_radius=1.0)
    db.add("e1", torch.tensor([0.0, 0.0]), "paris", 0)
    db.add("e2", torch.tensor([1.5, 0.0]), "paris", 0)  # within radius + init_radius, same answer: joins
    assert len(db) == 1 and db.points[0] == ["e1", "e2"] and torch.allclose(db.centres[0], torch.tensor([0.75, 0.0]))
    assert float(db.radii[0]) == pytest.approx(1.0)  # the farthest point is 0.75 away: the radius stays init_radius
    db.add("e3", torch.tensor([0.75, 1.0]), "rome", 1)  # 1.0 from the centre, another answer: the radii split
    assert len(db) == 2 and db.conflicts == 1
    assert float(db.radii[0]) == pytest.approx(0.5, abs=1e-4) and db.forgotten == {"e1", "e2"}  # both 0.75 > 0.5
    blocks, _, answered, nearest = db.search(torch.tensor([[0.75, 1.1], [10.0, 10.0], [0.8, 0.0]]))
    assert blocks.tolist() == [1, NO_BLOCK, NO_BLOCK] and answered == ["e3", None, None]  # cluster 0 has no points
    assert nearest.tolist() == [1, 1, 0]


def test_refreshed_codes_follow_the_routers_and_paper_codes_stay_as_trained(tiny_dir, tmp_path):
    """refresh_codes (ours, off by default) reads every live edit's codes again after each training, so its own
    prompt stays at distance 0 as the shared routers move; the paper's ELDER keeps the code read when it was trained."""
    (p1, t1), (p2, t2) = EDITS["causal"]
    for refresh in (False, True):
        editor = elder(tiny_dir, epsilon=12, refresh_codes=refresh)
        editor.edit(p1, t1)
        trained = editor.codes["e1"].clone()
        with torch.no_grad():  # the routers as a run of later edits leaves them, moved far
            editor.routers.add_(torch.randn(editor.routers.shape, generator=torch.Generator().manual_seed(0)) * 50)
        editor.edit(p2, t2)
        now = editor.code_of(editor.mixture_weights(editor.queries["e1"], False)[1])
        assert not torch.equal(trained, now)  # the first edit's prompt no longer reads the code it was trained with
        assert torch.equal(editor.codes["e1"], now if refresh else trained)
        assert (editor.locate(p1)[1] == 0.0) == refresh
    editor.save(tmp_path / "snap")
    loaded = ElderEditor.load(tmp_path / "snap", model=str(tiny_dir("llama")))
    assert torch.equal(loaded.codes["e1"], now) and torch.equal(loaded.queries["e1"], editor.queries["e1"])


def test_elder_subject_gate_edits_exactly_the_inputs_about_a_live_edit(tiny_dir, tmp_path):
    """deferral="subject" (ours): SoLA's subject routing decides whether the mixture is used. The edit's prompt and a
    rewording that names its subject pass; the same relation about another subject, another relation about the same
    subject and unrelated text compute the base model bit for bit; save -> load rebuilds the gate from the edits;
    rollback closes it."""
    editor = elder(tiny_dir, deferral="subject")
    prompt, target = "Who founded Acme Rockets?", "Jane Roe"
    rewording = "Who was the founder of Acme Rockets?"
    outside = ["Who founded Zenith Motors?", "When did Acme Rockets go bankrupt?"] + UNRELATED
    base = logits(editor, [prompt, rewording] + outside)
    assert editor.calibrate_threshold(UNRELATED, 0.0, against=[prompt]) == pytest.approx(0.6)
    assert editor.config.gate_unnamed_threshold is not None  # edits without a subject: whole prompts, calibrated
    editor.edit(prompt, target, subject="Acme Rockets")
    assert editor.generate(prompt, 12) == target
    found = editor.route(prompt)
    assert found.edit_id == "e1" and found.distance == pytest.approx(0.0, abs=1e-5)
    assert editor.route(rewording).edit_id == "e1"
    assert not torch.equal(editor.logits(rewording), base[1])  # it passes: the mixture is applied
    for text, before in zip(outside, base[2:]):
        assert editor.route(text) is None and torch.equal(editor.logits(text), before)
    with editor.disabled():  # in one batch, the row that does not pass reads the base model exactly
        unedited = editor.score([prompt, outside[0]], [target, target])
    edited = editor.score([prompt, outside[0]], [target, target])
    assert edited[0].nll < unedited[0].nll and edited[1].nll == unedited[1].nll
    assert editor.info()["threshold"] == pytest.approx(0.6)
    editor.save(tmp_path / "snap")
    loaded = ElderEditor.load(tmp_path / "snap", model=str(tiny_dir("llama")))
    assert loaded.config.deferral == "subject" and loaded.route(rewording).edit_id == "e1"
    assert torch.equal(loaded.logits(prompt), editor.logits(prompt))
    assert loaded.route(outside[0]) is None
    editor.rollback("e1")
    assert editor.route(prompt) is None and torch.equal(editor.logits(prompt), base[0])
    with pytest.raises(ConfigError, match="gate_threshold=0 must be positive"):
        ElderConfig(deferral="subject", gate_threshold=0).validate()


def test_subject_gate_rebuilt_in_one_call_routes_as_the_gate_built_edit_by_edit(tiny_dir):
    """`SubjectGate.add_many` (rebuilding on load) keys each edit as `add` does: its given subject if every prompt
    names it, else the name its prompts share, else the whole prompt; in any mix, in slot order."""
    editor = elder(tiny_dir, deferral="subject")
    edits = [(1, ["Who founded Acme Rockets?"], "Acme Rockets"),
             (2, ["What is the capital of Freedonia?", "Freedonia's capital is"], None),  # the shared name
             (4, ["Tell me a joke about ducks."], None),  # no name: the whole prompt
             (7, ["Where was Ada Lovelace born?"], "Somebody Else")]  # a subject its prompt does not name
    one_by_one, at_once = SubjectGate(editor.model, editor.task), SubjectGate(editor.model, editor.task)
    for slot, prompts, subject in edits:
        one_by_one.add(slot, [editor.encode(p) for p in prompts], subject)
    at_once.add_many([(slot, [editor.encode(p) for p in prompts], subject) for slot, prompts, subject in edits])
    texts = ["Who was the founder of Acme Rockets?", "Which city is the capital of Freedonia?",
             "Tell me a joke about ducks.", "Where was Ada Lovelace born?", "Who founded Zenith Motors?"]
    (near, slots), (near_at_once, slots_at_once) = one_by_one.nearest(texts), at_once.nearest(texts)
    assert slots.tolist() == slots_at_once.tolist() and slots.tolist()[:4] == [1, 2, 4, 7]
    assert torch.allclose(near, near_at_once, atol=1e-5)
    assert one_by_one.passes(texts).tolist() == at_once.passes(texts).tolist() == [True, True, True, True, False]


def test_elder_query_deferral_matches_stored_queries_and_defers_the_rest_to_the_base_model(tiny_dir, tmp_path):
    """deferral="queries" (ours): an input uses the mixture only within the calibrated radius of a live edit's
    stored query; the edit's own prompt is at distance 0, calibration questions stay out, deferred inputs compute
    the base model bit for bit, and rollback takes the edit's queries away."""
    editor = elder(tiny_dir, deferral="queries")
    prompt, target = EDITS["causal"][0]
    questions = UNRELATED + ["Where is the Louvre?", "How tall is Everest?", "What is two plus two?"]
    base = logits(editor, [prompt] + questions)
    assert editor.calibrate_threshold(questions, 0.0) is None  # nothing stored yet: no radius, everything defers
    first = editor.calibrate_threshold(questions, 0.0, against=[prompt])  # a first radius against the edit to come
    assert first is not None and first > 0
    editor.edit(prompt, target)
    radius = editor.config.query_radius
    assert radius is not None and radius > 0  # chosen again after the training, against the stored query
    found = editor.route(prompt)
    assert found is not None and found.edit_id == "e1" and found.distance == pytest.approx(0.0, abs=1e-4)
    assert editor.generate(prompt, 12) == target
    for question, before in zip(questions, base[1:]):  # rate 0: every calibration question is at the radius or out
        assert editor.route(question) is None and torch.equal(editor.logits(question), before)
    assert editor.deferral(questions) == {"reached": 0.0}
    editor.save(tmp_path / "snap")
    loaded = ElderEditor.load(tmp_path / "snap", model=str(tiny_dir("llama")))
    assert loaded.config.deferral == "queries" and loaded.config.query_radius == radius
    assert loaded.route(prompt).edit_id == "e1" and torch.equal(loaded.logits(prompt), editor.logits(prompt))
    editor.rollback("e1")
    assert editor.route(prompt) is None and torch.equal(editor.logits(prompt), base[0])
    with pytest.raises(ConfigError, match="deferral='hamming' is unknown"):
        ElderConfig(deferral="hamming").validate()
    with pytest.raises(ConfigError, match="query_radius=-1.0 must be positive"):
        ElderConfig(query_radius=-1.0).validate()
