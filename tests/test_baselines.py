"""GRACE, MELO and LoRA-FT behind the Editor surface: the contract tests, with each method's documented exceptions
(LoRA-FT touches every input and cannot roll back; MELO rolls back only an edit alone in its cluster; GRACE's single
replaced vector cannot carry a multi-token answer on a tiny random model, so its tiny tests pin mechanics and the
embedded-model test pins the answer)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import EDITS, UNRELATED

from sola.errors import ConfigError, SolaError, StoreError
from sola.eval import BenchSpec, run
from sola.eval.study import write_study
from sola.methods import (
    ElderConfig,
    ElderEditor,
    GraceConfig,
    GraceEditor,
    LoraFTConfig,
    LoraFTEditor,
    MeloConfig,
    MeloEditor,
    RollbackNotSupportedError,
)

CAUSAL = ["llama", "gpt2"]
TRAINING = dict(prompt_format="raw", learning_rate=0.05, max_steps=200)


def make(method: str, tiny_dir, family: str = "llama", **changes):
    if method == "grace":
        return GraceEditor.from_pretrained(str(tiny_dir(family)), config=GraceConfig(
            prompt_format="raw", radius=1e-3, **changes))
    if method == "elder":
        return ElderEditor.from_pretrained(str(tiny_dir(family)), config=ElderConfig(
            **{"epsilon": 1, **TRAINING, **changes}))
    if method == "melo":
        return MeloEditor.from_pretrained(str(tiny_dir(family)), config=MeloConfig(
            **{"radius": 1e-3, **TRAINING, **changes}))
    return LoraFTEditor.from_pretrained(str(tiny_dir(family)), config=LoraFTConfig(**{**TRAINING, **changes}))


def logits(editor, prompts):
    return [editor.logits(p) for p in prompts]


def same(left, right) -> bool:
    return all(torch.equal(a, b) for a, b in zip(left, right))


@pytest.mark.parametrize("family", CAUSAL)
@pytest.mark.parametrize("method", ["melo", "lora-ft"])
def test_lora_baselines_learn_their_edits(tiny_dir, family, method):
    editor = make(method, tiny_dir, family)
    prompt, target = EDITS["causal"][0]
    edit = editor.edit(prompt, target)
    assert edit.converged and editor.generate(prompt, 12) == target


@pytest.mark.parametrize("family", CAUSAL)
def test_grace_trains_a_value_that_moves_the_answer_toward_the_target(tiny_dir, family):
    editor = make("grace", tiny_dir, family, max_steps=30)
    prompt, target = EDITS["causal"][0]
    before = editor.score([prompt], [target])[0].nll
    editor.edit(prompt, target)
    after = editor.score([prompt], [target])[0]
    assert after.nll < before - 1.0 and after.predicted[0] == after.tokens[0]  # the replaced token's next token
    assert editor.route(prompt).edit_id == "e1"


@pytest.mark.parametrize("family", CAUSAL)
@pytest.mark.parametrize("method", ["grace", "melo"])
def test_routed_baselines_leave_unrelated_inputs_bit_identical(tiny_dir, family, method):
    editor = make(method, tiny_dir, family, max_steps=20)
    base = logits(editor, UNRELATED)
    for prompt, target in EDITS["causal"]:
        editor.edit(prompt, target)
    assert same(logits(editor, UNRELATED), base)
    assert editor.route(UNRELATED[0]) is None


def test_lora_ft_changes_unrelated_inputs_its_documented_exception(tiny_dir):
    editor = make("lora-ft", tiny_dir)
    base = logits(editor, UNRELATED)
    editor.edit(*EDITS["causal"][0])
    assert not same(logits(editor, UNRELATED), base)
    with editor.disabled():
        assert same(logits(editor, UNRELATED), base)


@pytest.mark.parametrize("family", CAUSAL)
def test_grace_rollback_is_exact_and_a_middle_rollback_equals_never_editing(tiny_dir, family):
    editor = make("grace", tiny_dir, family, max_steps=20)
    probes = [p for p, _ in EDITS["causal"]] + UNRELATED
    base = logits(editor, probes)
    (p1, t1), (p2, t2) = EDITS["causal"]
    editor.edit(p1, t1)
    after_first = logits(editor, probes)
    editor.edit(p2, t2)
    editor.rollback("e2")
    assert same(logits(editor, probes), after_first)
    editor.edit(p2, t2)
    editor.rollback("e1")
    only_second = make("grace", tiny_dir, family, max_steps=20)
    only_second.edit(p2, t2)
    assert same(logits(editor, probes), logits(only_second, probes))
    editor.rollback("e3")
    assert same(logits(editor, probes), base)
    assert editor.info()["entries"] == 0


def test_grace_codebook_expands_for_the_same_answer_and_splits_for_another(tiny_dir):
    editor = make("grace", tiny_dir, max_steps=1)
    first, second = "Who founded Acme?", "Who was the founder of Acme?"
    distance = float((editor._capture(editor.encode(first))[0] - editor._capture(editor.encode(second))[0]).norm())
    editor.config = editor.config.replace(radius=0.75 * distance)  # the second key is outside the first's radius
    editor.edit(first, "Jane Roe")  # but within radius + its radius: a neighbour
    editor.edit(second, "jane roe")  # the same answer after normalisation: expand
    assert (editor.info()["entries"], editor.expansions, editor.splits) == (1, 1, 0)
    assert editor.route("Who was the founder of Acme?").edit_id == "e2"  # e2's training set the shared value
    assert float(editor.layer.radii[0]) == pytest.approx(distance, rel=1e-5)
    editor.config = editor.config.replace(radius=1e6)
    editor.edit("Who runs Acme?", "John Doe")  # near, another answer: split
    info = editor.info()
    assert (info["entries"], editor.splits) == (2, 1)
    radii = editor.layer.radii
    assert float(radii[1]) == pytest.approx(float(radii[0]), abs=1e-4)  # both halves of their distance
    editor.rollback("e2")  # replayed without e2 (each edit with the radius it was made with): no expansion
    assert (editor.expansions, editor.splits, editor.info()["entries"]) == (0, 1, 2)


def test_melo_clusters_share_blocks_and_count_centre_updates(tiny_dir):
    editor = make("melo", tiny_dir, max_steps=30)
    editor.config = editor.config.replace(radius=1e6)  # one cluster for everything
    (p1, t1), (p2, t2) = EDITS["causal"]
    editor.edit(p1, t1)
    editor.edit(p2, t2)
    info = editor.info()
    assert (info["clusters"], info["centre_updates"]) == (1, 1)
    assert 0 <= info["mismatches"] <= 2
    with pytest.raises(RollbackNotSupportedError, match="e1 also trained"):
        editor.rollback("e2")
    assert editor.get("e2").live and editor.info()["clusters"] == 1


def test_melo_rolls_back_an_edit_alone_in_its_cluster_exactly(tiny_dir):
    editor = make("melo", tiny_dir, max_steps=30)
    probes = [p for p, _ in EDITS["causal"]] + UNRELATED
    (p1, t1), (p2, t2) = EDITS["causal"]
    editor.edit(p1, t1)
    after_first = logits(editor, probes)
    editor.edit(p2, t2)
    editor.rollback("e2")
    assert same(logits(editor, probes), after_first)
    assert not editor.get("e2").live


def test_lora_ft_refuses_rollback_and_changes_nothing(tiny_dir):
    editor = make("lora-ft", tiny_dir, max_steps=30)
    editor.edit(*EDITS["causal"][0])
    before = logits(editor, UNRELATED)
    with pytest.raises(RollbackNotSupportedError, match="every edit trains the same LoRA"):
        editor.rollback("e1")
    assert same(logits(editor, UNRELATED), before) and editor.get("e1").live


@pytest.mark.parametrize("method", ["elder", "grace", "melo", "lora-ft"])
def test_save_load_reproduces_outputs_bit_for_bit(tiny_dir, tmp_path, method):
    editor = make(method, tiny_dir, max_steps=20)
    for prompt, target in EDITS["causal"]:
        editor.edit(prompt, target)
    probes = [p for p, _ in EDITS["causal"]] + UNRELATED
    editor.save(tmp_path / "snap")
    loaded = type(editor).load(tmp_path / "snap", model=str(tiny_dir("llama")))
    assert same(logits(loaded, probes), logits(editor, probes))
    assert [e.to_dict() for e in loaded.edits()] == [e.to_dict() for e in editor.edits()]
    editor.save(tmp_path / "snap")  # saving again over its own snapshot replaces it
    other = MeloEditor if method != "melo" else GraceEditor
    with pytest.raises(StoreError, match=f"holds a '{method}' snapshot"):
        other.load(tmp_path / "snap", model=str(tiny_dir("llama")))


@pytest.mark.parametrize("method", ["elder", "grace", "melo", "lora-ft"])
@pytest.mark.parametrize("bad", ["empty prompt", "blank target", "unknown id"])
def test_bad_input_is_one_clear_error_and_changes_nothing(tiny_dir, method, bad):
    editor = make(method, tiny_dir, max_steps=20)
    editor.edit(*EDITS["causal"][0])
    before = logits(editor, UNRELATED + [EDITS["causal"][0][0]])
    with pytest.raises(SolaError):
        if bad == "empty prompt":
            editor.edit("", "x")
        elif bad == "blank target":
            editor.edit("Who?", "   ")
        else:
            editor.rollback("e99")
    assert same(logits(editor, UNRELATED + [EDITS["causal"][0][0]]), before)
    assert [e.id for e in editor.edits()] == ["e1"]


def test_routed_baselines_need_a_radius_and_say_how_to_get_one(tiny_dir):
    editor = GraceEditor.from_pretrained(str(tiny_dir("llama")), config=GraceConfig(prompt_format="raw"))
    with pytest.raises(Exception, match="calibrate_threshold"):
        editor.edit(*EDITS["causal"][0])
    assert editor.edits() == [] and editor.info()["entries"] == 0
    radius = editor.calibrate_threshold(UNRELATED, 0.0, against=[p for p, _ in EDITS["causal"]])
    assert radius > 0 and editor.config.radius == radius


def test_baselines_refuse_models_they_do_not_implement(tiny_dir):
    with pytest.raises(Exception, match="causal language models"):
        MeloEditor.from_pretrained(str(tiny_dir("t5")), config=MeloConfig(radius=1.0))


# -- in the benchmark harness ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["elder", "grace", "melo", "lora-ft"])
def test_bench_runs_each_baseline_and_restarts_from_its_last_snapshot(tmp_path, tiny_dir, tiny_data, method):
    config = {"max_steps": 30} if method == "grace" else {"learning_rate": 0.05, "max_steps": 200}
    threshold = {"lora-ft": None, "elder": 1}.get(method, 1e-3)
    spec = BenchSpec(method=method, dataset="zsre", edits=5, data=str(tiny_data), model=str(tiny_dir("llama")),
                     threshold=threshold, checkpoints=[2], batch_size=2,
                     max_new_tokens=12, config=config)
    results = run(spec, tmp_path / "run", progress=False)
    summary = results["metrics"]["all"]
    assert results["method"] == method and [c["edits"] for c in results["checkpoints"]] == [2, 5]
    assert results["cost"]["store_bytes_per_edit"] > 0
    if method in ("grace", "melo"):
        assert summary["teacher_forced"]["loc_unrelated"] == 1.0  # radius 1e-3: NQ questions never route
        assert "routing" in summary
    if method == "melo":
        assert summary["teacher_forced"]["rel"] > 0.7  # the two Acme records conflict: one of them fails
        # the semantic drift SoLA's Fig. 2 measures, followed at every checkpoint
        states = [c["state"] for c in results["checkpoints"]]
        assert [s["edits"] for s in states] == [2, 5]
        assert all({"clusters", "centre_updates", "mismatches"} <= set(s) for s in states)
        assert states[-1]["centre_updates"] >= states[0]["centre_updates"]
        assert results["state"] == states[-1]
        doc = tmp_path / "docs" / "results.md"
        write_study([tmp_path / "run"], doc)
        assert f"after 5: clusters {states[-1]['clusters']}, centre updates" in doc.read_text()
    if method == "grace":
        assert {"entries", "expansions", "splits"} <= set(results["checkpoints"][-1]["state"])
    # progress past the last snapshot (here: none) is dropped and made again, to the same numbers
    progress = (tmp_path / "run" / "progress.jsonl").read_text().splitlines()
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    (resumed_dir / "progress.jsonl").write_text("\n".join(progress[:3]) + "\n")
    (resumed_dir / "spec.json").write_text((tmp_path / "run" / "spec.json").read_text())
    resumed = run(spec, resumed_dir, progress=False)  # no snapshot: starts again from edit 1
    assert json.dumps(resumed["metrics"], sort_keys=True) == json.dumps(results["metrics"], sort_keys=True)
    if method != "grace":  # the same SnapshotMethod path for every baseline: once is enough for the suite's time
        return
    # stopped after the snapshot of the last edit was saved but before that edit's row was written: the resumed run
    # measures its ES in the state the snapshot holds (right after it) instead of refusing to resume
    stopped = tmp_path / "stopped"
    shutil.copytree(tmp_path / "run", stopped)
    (stopped / "progress.jsonl").write_text("\n".join(progress[:-1]) + "\n")
    (stopped / "checkpoints.jsonl").unlink()
    (stopped / "results.json").unlink()  # written only at the end of a run
    again = run(spec, stopped, progress=False)
    assert json.dumps(again["metrics"], sort_keys=True) == json.dumps(results["metrics"], sort_keys=True)


@pytest.mark.parametrize("method", ["grace", "melo"])
def test_routed_baselines_read_unrouted_locality_from_the_base_run_to_the_same_numbers(tmp_path, tiny_dir, tiny_data,
                                                                                      method):
    """GRACE and MELO leave an input outside every radius on the base model, so the bench reads those locality probes
    from the base run; the numbers must equal running every probe. The relation probes are other records' edit
    prompts (distance 0: routed), the NQ questions are not, so both paths are taken."""
    config = {"max_steps": 30} if method == "grace" else {"learning_rate": 0.05, "max_steps": 200}
    spec = dict(method=method, dataset="zsre", edits=5, data=str(tiny_data), model=str(tiny_dir("llama")),
                threshold=1e-3, checkpoints=[], batch_size=2, max_new_tokens=12, config=config)
    full = run(BenchSpec(**spec, full_locality=True), tmp_path / "full", progress=False)
    read = run(BenchSpec(**spec), tmp_path / "read", progress=False)
    assert json.dumps(read["metrics"], sort_keys=True) == json.dumps(full["metrics"], sort_keys=True)
    assert [r.get("loc_changed") for r in read["rows"]] == [r.get("loc_changed") for r in full["rows"]]
    work = read["evaluation"]
    assert work["probes_run"] > 0 and work["probes_read_from_base"] > 0
    assert full["evaluation"]["locality"] == "every probe run"


def test_bench_refuses_sola_options_for_baselines(tmp_path, tiny_dir, tiny_data):
    spec = BenchSpec(method="grace", dataset="zsre", edits=2, data=str(tiny_data), model=str(tiny_dir("llama")),
                     key="encoder", checkpoints=[])
    with pytest.raises(Exception, match="SoLA options"):
        run(spec, tmp_path / "x", progress=False)


def test_unknown_method_names_the_available_ones(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match="unknown method 'rome'; available: elder, elder-online, grace, lora-ft, "
                       "melo, sola"):
        run(BenchSpec(method="rome", dataset="zsre", edits=2, data=str(tiny_data)), tmp_path / "x", progress=False)


# -- ELDER ----------------------------------------------------------------------------------------------------------


def test_elder_allocations_are_seeded_the_same_for_identical_edits_and_distinct_otherwise(tiny_dir):
    editor = make("elder", tiny_dir, max_steps=1)
    first = editor._allocation(["Who founded Acme?"], "Jane Roe")
    assert torch.equal(first, make("elder", tiny_dir, max_steps=1)._allocation(["Who founded Acme?"], "Jane Roe"))
    assert first.shape == (len(editor.layers), editor.config.top_k)
    editor.edit("Who founded Acme?", "Jane Roe")
    assert torch.equal(editor._allocation(["who founded acme"], "jane roe"), first)  # identical after normalising
    seen = {tuple(first.flatten().tolist())}
    for n in range(4):  # 2 layers, 4 choose 2 per layer: 36 allocations; each new edit gets an unused one
        editor.edit(f"Who founded company number {n}?", f"Person {n}")
        seen.add(tuple(editor.allocations[f"e{n + 2}"].flatten().tolist()))
    assert len(seen) == 5


def test_elder_codes_are_packed_bits_and_hamming_distances_count_them(tiny_dir):
    editor = make("elder", tiny_dir, max_steps=1)
    top = torch.tensor([[[0, 1], [2, 3]], [[0, 2], [2, 3]]])  # two inputs, L=2, k=2, N=4
    codes = editor.code_of(top)
    assert codes.dtype == torch.uint8 and codes.tolist() == [[0b11000011], [0b11000101]]
    editor.codes = {"a": codes[:1]}
    distances, ids = editor.deferral_rule.distances(None, top)
    assert ids == ["a"] and distances.flatten().tolist() == [0, 2]  # one LoRA swapped: two bits differ
    # Algorithm 1 edits only below epsilon: a distance equal to it defers
    editor.config = editor.config.replace(epsilon=3)
    assert editor.deferral_rule.within(top).tolist() == [True, True]
    editor.config = editor.config.replace(epsilon=2)
    assert editor.deferral_rule.within(top).tolist() == [True, False]
    editor.codes = {"a": codes[:1], "b": codes[1:]}  # every stored code counts, each named by its edit
    distances, ids = editor.deferral_rule.distances(None, top)
    assert ids == ["a", "b"] and distances.tolist() == [[0, 2], [2, 0]]


def test_elder_defers_unmatched_inputs_to_the_base_model_and_rollback_removes_the_code(tiny_dir):
    editor = make("elder", tiny_dir)
    prompt, target = EDITS["causal"][0]
    base = logits(editor, [prompt] + UNRELATED)
    editor.edit(prompt, target)
    assert editor.generate(prompt, 12) == target and editor.route(prompt).edit_id == "e1"
    for text, before in zip(UNRELATED, base[1:]):  # epsilon 1: only an identical code uses the mixture
        if editor.route(text) is None:
            assert torch.equal(editor.logits(text), before)
    rolled = editor.rollback("e1")
    assert "keep what its training changed" in rolled.note
    assert editor.route(prompt) is None and same(logits(editor, [prompt] + UNRELATED), base)
