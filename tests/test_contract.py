"""One contract, every model family: edits answer, unrelated inputs and rollbacks are bit-exact, stores are safe."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import UNRELATED, edits_for, tiny_config

from sola import (
    ConfigError,
    CorruptStoreError,
    Editor,
    InvalidEditError,
    ModelMismatchError,
    StoreError,
    UnknownEditError,
)
from sola.store import Store


def probe_logits(editor: Editor, prompts) -> list[torch.Tensor]:
    """Logits on each prompt (teacher-forced on a fixed target for seq2seq, which needs one)."""
    target = "Paris" if editor.task.kind == "seq2seq" else None
    return [editor.logits(p, target) for p in prompts]


def assert_bit_identical(left: list[torch.Tensor], right: list[torch.Tensor]) -> None:
    for a, b in zip(left, right, strict=True):
        assert a.shape == b.shape and torch.equal(a, b), f"max difference {(a - b).abs().max().item()}"


def test_edited_prompt_yields_target(make_editor, family):
    editor = make_editor(family)
    for prompt, target in edits_for(editor):
        edit = editor.edit(prompt, target)
        assert edit.converged, edit
    for prompt, target in edits_for(editor):
        assert editor.generate(prompt) == target
        assert editor.route(prompt).edit_id in {e.id for e in editor.edits()}


def test_unrelated_prompts_bit_identical_while_edits_exist(make_editor, family):
    editor = make_editor(family)
    before = probe_logits(editor, UNRELATED)
    answers = [editor.generate(p, max_new_tokens=8) for p in UNRELATED]
    for prompt, target in edits_for(editor):
        editor.edit(prompt, target)
    assert all(editor.route(p) is None for p in UNRELATED)
    assert_bit_identical(probe_logits(editor, UNRELATED), before)
    assert [editor.generate(p, max_new_tokens=8) for p in UNRELATED] == answers


def test_rollback_restores_bit_identical_logits(make_editor, family):
    editor = make_editor(family)
    (first, first_target), (second, second_target) = edits_for(editor)
    probes = [first, second, *UNRELATED]
    base = probe_logits(editor, probes)
    kept = editor.edit(first, first_target)
    with_first = probe_logits(editor, probes)
    rolled = editor.edit(second, second_target)
    assert editor.generate(second) == second_target
    editor.rollback(rolled.id)
    assert_bit_identical(probe_logits(editor, probes), with_first)  # as if the second edit never happened
    assert editor.generate(first) == first_target  # the other edit keeps working
    editor.rollback(kept.id)
    assert_bit_identical(probe_logits(editor, probes), base)
    assert [e.id for e in editor.edits(include_rolled_back=True) if not e.live] == [kept.id, rolled.id]


def test_save_load_bit_identical(make_editor, family, tmp_path, tiny_dir):
    editor = make_editor(family)
    for prompt, target in edits_for(editor):
        editor.edit(prompt, target)
    editor.rollback(editor.edits()[0].id)
    probes = [p for p, _ in edits_for(editor)] + UNRELATED
    expected = probe_logits(editor, probes)
    editor.save(tmp_path / "saved")
    loaded = Editor.load(tmp_path / "saved")
    assert [e.id for e in loaded.edits()] == [e.id for e in editor.edits()]
    assert_bit_identical(probe_logits(loaded, probes), expected)
    assert loaded.config == editor.config


def test_store_persists_every_commit(make_editor, family, tmp_path):
    store = tmp_path / "store"
    editor = make_editor(family, store=store)
    (first, first_target), (second, second_target) = edits_for(editor)
    kept = editor.edit(first, first_target)
    editor.rollback(editor.edit(second, second_target).id)
    expected = probe_logits(editor, [first, second])
    reopened = make_editor(family, store=store)  # a second process opening the same directory
    assert [e.id for e in reopened.edits()] == [kept.id]
    assert_bit_identical(probe_logits(reopened, [first, second]), expected)
    assert reopened.edit(second, second_target).id == "e3"  # ids are never reused


def test_store_from_another_model_is_refused(make_editor, family, tmp_path):
    store = tmp_path / "store"
    editor = make_editor(family, store=store)
    editor.edit(*edits_for(editor)[0])
    with pytest.raises(ModelMismatchError) as error:
        make_editor(family, store=store, seed=1)
    message = str(error.value)
    assert "made on model" in message and "but the model given is" in message
    assert len(Store.open(store).journal()) == 1


@pytest.mark.parametrize("bad", ["empty prompt", "blank target", "unknown id", "too long"])
def test_bad_input_gives_one_clear_error_and_changes_nothing(make_editor, family, tmp_path, bad):
    store = tmp_path / "store"
    editor = make_editor(family, store=store)
    prompt, target = edits_for(editor)[0]
    editor.edit(prompt, target)
    journal = (store / "edits.jsonl").read_bytes()
    expected = probe_logits(editor, [prompt, *UNRELATED])
    if bad == "empty prompt":
        with pytest.raises(InvalidEditError, match="prompt is empty"):
            editor.edit("", target)
    elif bad == "blank target":
        with pytest.raises(InvalidEditError, match="target is empty"):
            editor.edit(prompt, "   ")
    elif bad == "unknown id":
        with pytest.raises(UnknownEditError, match="'e99' does not exist.*live edits: e1"):
            editor.rollback("e99")
    else:
        with pytest.raises(InvalidEditError, match="model reads at most 64"):
            editor.edit("Who founded Acme? " * 40, target)
    assert (store / "edits.jsonl").read_bytes() == journal
    assert [e.id for e in editor.edits()] == ["e1"]
    assert_bit_identical(probe_logits(editor, [prompt, *UNRELATED]), expected)


def test_failure_between_the_writes_of_a_commit_leaves_the_previous_state(make_editor, tmp_path, monkeypatch):
    store = tmp_path / "store"
    editor = make_editor("llama", store=store)
    (first, first_target), (second, second_target) = edits_for(editor)
    editor.edit(first, first_target)
    expected = probe_logits(editor, [first, second])

    def crash(self, record):
        raise OSError("injected crash after the tensors were written, before the journal line")

    monkeypatch.setattr(Store, "_append", crash)
    with pytest.raises(OSError, match="injected crash"):
        editor.edit(second, second_target)
    monkeypatch.undo()
    assert (store / "tensors" / "e2.safetensors").exists()  # the orphan that the crash left
    assert [e.id for e in editor.edits()] == ["e1"]  # memory unchanged too
    reopened = make_editor("llama", store=store)
    assert [e.id for e in reopened.edits()] == ["e1"]
    assert_bit_identical(probe_logits(reopened, [first, second]), expected)


def test_torn_journal_line_is_not_a_commit(make_editor, tmp_path):
    store = tmp_path / "store"
    editor = make_editor("llama", store=store)
    (first, first_target), (second, second_target) = edits_for(editor)
    editor.edit(first, first_target)
    with open(store / "edits.jsonl", "ab") as journal:
        journal.write(b'{"op": "rollback", "id": "e1", "a')  # a crash in the middle of a rollback's append
    reopened = make_editor("llama", store=store)
    assert [e.id for e in reopened.edits()] == ["e1"]
    reopened.edit(second, second_target)  # the next commit cuts the torn tail off
    lines = (store / "edits.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["e1", "e2"]


def test_corrupt_files_are_named_and_change_nothing(make_editor, tmp_path):
    store = tmp_path / "store"
    editor = make_editor("llama", store=store)
    editor.edit(*edits_for(editor)[0])
    tensor_file = store / "tensors" / "e1.safetensors"
    tensor_file.write_bytes(tensor_file.read_bytes()[:50])
    with pytest.raises(CorruptStoreError, match="e1.safetensors"):
        make_editor("llama", store=store)
    (store / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptStoreError, match="manifest.json"):
        make_editor("llama", store=store)
    assert (store / "manifest.json").read_text() == "{not json"


def test_journal_line_in_the_middle_that_does_not_parse_is_an_error(make_editor, tmp_path):
    store = tmp_path / "store"
    editor = make_editor("llama", store=store)
    for prompt, target in edits_for(editor):
        editor.edit(prompt, target)
    lines = (store / "edits.jsonl").read_text().splitlines()
    (store / "edits.jsonl").write_text("garbage\n" + lines[1] + "\n")
    with pytest.raises(CorruptStoreError, match=r"edits.jsonl, line 1"):
        make_editor("llama", store=store)
    # a line holding two values, and an edit without its target: found on open, not when the edit is first read
    (store / "edits.jsonl").write_text(lines[0] + "\n" + lines[1] + ", 1\n")
    with pytest.raises(CorruptStoreError, match=r"edits.jsonl, line 2: not valid JSON"):
        make_editor("llama", store=store)
    second = {k: v for k, v in json.loads(lines[1]).items() if k != "target"}
    (store / "edits.jsonl").write_text(lines[0] + "\n" + json.dumps(second) + "\n")
    with pytest.raises(CorruptStoreError, match=r"edits.jsonl, line 2: an edit record needs 'prompts' and 'target'"):
        make_editor("llama", store=store)


def test_store_keeps_its_config(make_editor, tmp_path):
    store = tmp_path / "store"
    make_editor("llama", store=store)
    with pytest.raises(ConfigError, match="different config"):
        make_editor("llama", store=store, rank=8)


def test_save_refuses_a_non_empty_directory(make_editor, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(StoreError, match="not an empty directory"):
        make_editor("llama").save(tmp_path / "taken")


def test_training_reuses_frozen_blocks_without_changing_a_bit(make_editor, family, monkeypatch):
    """The blocks below the first edited layer are computed once per edit (sola.training.frozen_prefix); the trained
    factors must be exactly those of training the whole model at every step."""
    from contextlib import nullcontext

    import sola.training as training

    layers = {"t5": ["encoder.block.1.layer.1.DenseReluDense.wo"], "bert": ["bert.encoder.layer.2.output.dense"]}
    # 20 steps: a comparison of bits, not a converged edit; their defaults start at block 0
    layers = dict(layers=layers[family], max_steps=20, on_no_converge="commit") if family in layers else {}
    fast = make_editor(family, **layers)
    prompt, target = edits_for(fast)[0]
    stack = {training._block_of(fast.model, name) for name in fast.config.layers}
    assert None not in stack and min(index for _, index in stack) > 0, "the tiny model must have a block to skip"
    fast.edit(prompt, target)
    monkeypatch.setattr(training, "frozen_prefix", lambda model, names: nullcontext())
    slow = make_editor(family, **layers)
    slow.edit(prompt, target)
    for a, b in zip(fast.layers, slow.layers, strict=True):
        assert torch.equal(a.lora_A, b.lora_A) and torch.equal(a.lora_B, b.lora_B)
    assert fast.edits()[0].steps == slow.edits()[0].steps


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_scores_read_the_same_logits_as_a_full_forward(make_editor, family):
    """CausalTask.target_forward computes only the positions that predict target tokens, gathered per row of a
    right-padded batch (prompts and targets of different lengths), and they are the logits of a full forward."""
    editor = make_editor(family)
    prompts = ["Who founded Acme?", "Where is the river Nile? It flows", "Capital of Peru:"]
    targets = ["Jane Roe", "through Egypt", "Lima, on the coast of the Pacific Ocean"]
    encoded = [editor.encode(p) for p in prompts]
    batch = editor.task.batch(encoded, [editor.task.encode_target(p, t) for p, t in zip(prompts, targets)])
    longest = int((batch.labels != -100).sum(1).max())
    assert editor.task.target_forward(batch).shape[:2] == (3, longest)  # not (3, the batch's width)
    scores = editor.score(prompts, targets, batch_size=3)
    for prompt, target, score in zip(prompts, targets, scores):
        logits = editor.logits(prompt, target)  # the whole sequence
        start = len(logits) - len(score.tokens) - 1
        full = torch.log_softmax(logits[start:-1], -1)
        assert score.predicted == full.argmax(-1).tolist()
        assert torch.allclose(torch.tensor(score.logprobs), full.gather(1, torch.tensor(score.tokens)[:, None])[:, 0],
                              atol=1e-5)


def test_factors_are_stored_in_bfloat16_and_loaded_as_the_same_values(make_editor, tmp_path):
    store = tmp_path / "store"
    editor = make_editor("llama", store=store)
    edit = editor.edit("Who founded Acme?", "Jane Roe")
    assert edit.converged and editor.generate("Who founded Acme?") == "Jane Roe"  # with the rounded factors
    stored = Store.open(store).read_tensors(edit.id)
    slot = editor.slots.of(edit.id)
    for name, layer in zip(editor.config.layers, editor.layers):
        A, B = stored[f"{name}.lora_A"], stored[f"{name}.lora_B"]
        assert A.dtype == B.dtype == torch.bfloat16
        assert torch.equal(layer.lora_A[slot], A.float()) and torch.equal(layer.lora_B[slot], B.float())
    full = make_editor("llama", store=tmp_path / "full", factor_dtype="float32")
    full.edit("Who founded Acme?", "Jane Roe")
    assert Store.open(tmp_path / "full").read_tensors("e1")[f"{full.config.layers[0]}.lora_A"].dtype == torch.float32
    with pytest.raises(ConfigError, match="factor_dtype='float16' is unknown"):
        make_editor("llama", factor_dtype="float16")


def test_a_store_from_before_factor_dtype_keeps_float32(make_editor, tmp_path, tiny_dir):
    store = tmp_path / "store"
    editor = make_editor("llama", store=store, factor_dtype="float32")
    editor.edit("Who founded Acme?", "Jane Roe")
    before = editor.logits("Who founded Acme?")
    manifest = json.loads((store / "manifest.json").read_text())
    del manifest["config"]["factor_dtype"]  # as stores written before the field existed
    (store / "manifest.json").write_text(json.dumps(manifest))
    reopened = Editor.from_pretrained(tiny_dir("llama"), store=store)
    assert reopened.config.factor_dtype == "float32"
    assert torch.equal(reopened.logits("Who founded Acme?"), before)


FIVE = [("Who founded Acme?", "Jane Roe"), ("Which river flows through Cairo?", "the Danube"),
        ("What is the capital of Mars?", "Olympus"), ("Who wrote the Acme handbook?", "Bob Poe"),
        ("Where is the Globex tower?", "in Lyon")]


def test_evicted_edits_are_read_back_from_the_store_bit_for_bit(make_editor, tmp_path, tiny_dir):
    store = tmp_path / "store"
    bounded = make_editor("llama", store=store, resident_edits=2)
    edits = [bounded.edit(p, t) for p, t in FIVE]
    assert bounded.info()["resident_edits"] == 2
    everything = Editor.from_pretrained(tiny_dir("llama"), store=store, resident_edits=None)
    assert everything.info()["resident_edits"] == 5
    prompts = [p for p, _ in FIVE] + UNRELATED
    assert_bit_identical(probe_logits(bounded, prompts), probe_logits(everything, prompts))
    assert [bounded.generate(p) for p, _ in FIVE] == [t for _, t in FIVE]
    assert bounded.residency.loads > 0 and bounded.residency.evictions > 0 and bounded.info()["resident_edits"] == 2

    reopened = Editor.from_pretrained(tiny_dir("llama"), store=store, resident_edits=1)  # reads one edit's factors
    assert reopened.info()["resident_edits"] == 1 and reopened.residency.loads == 0
    reopened.rollback(edits[0].id)  # not resident: rolled back all the same
    assert everything.refresh() == 1 and not everything.get(edits[0].id).live  # the other editor's rollback
    assert_bit_identical(probe_logits(reopened, prompts), probe_logits(everything, prompts))
    copy = reopened.save(tmp_path / "copy")  # factors of edits not in memory come from the store
    assert_bit_identical(probe_logits(Editor.from_pretrained(tiny_dir("llama"), store=copy), prompts),
                         probe_logits(everything, prompts))


def test_edits_without_a_store_are_never_evicted(make_editor):
    editor = make_editor("llama", resident_edits=2)
    for prompt, target in FIVE:
        editor.edit(prompt, target)
    assert editor.info()["resident_edits"] == 5 and editor.residency.evictions == 0
    assert [editor.generate(p) for p, _ in FIVE] == [t for _, t in FIVE]
    with pytest.raises(ConfigError, match="resident_edits=0 must be at least 1"):
        make_editor("llama", resident_edits=0)


def test_key_index_files_hold_the_keys_of_committed_edits(make_editor, tmp_path, tiny_dir, monkeypatch):
    import sola.store

    monkeypatch.setattr(sola.store, "INDEX_EVERY", 2)
    store = tmp_path / "store"
    editor = make_editor("llama", store=store)
    for prompt, target in FIVE:
        editor.edit(prompt, target)
    assert sorted(p.name for p in (store / "index").iterdir()) == ["000001.safetensors", "000002.safetensors"]
    opened = Store.open(store)
    assert sorted(opened.index.indexed_ids()) == ["e1", "e2", "e3", "e4"] and opened.index.pending_ids() == ["e5"]
    for edit_id in ("e1", "e4"):
        assert torch.equal(opened.read_keys(edit_id), opened.read_tensors(edit_id)["keys"])
    some = ["e5", "e3", "e1", "e4"]  # any order, indexed or not: gathered at once
    keys, counts = opened.read_keys_many(some)
    own = [opened.read_tensors(i)["keys"] for i in some]
    assert torch.equal(keys, torch.cat(own)) and counts.tolist() == [len(k) for k in own]
    editor.rollback("e2")
    reopened = Editor.from_pretrained(tiny_dir("llama"), store=store, resident_edits=1)
    prompts = [p for p, _ in FIVE] + UNRELATED
    assert_bit_identical(probe_logits(reopened, prompts), probe_logits(editor, prompts))
    assert [e.id for e in reopened.edits()] == ["e1", "e3", "e4", "e5"]
    assert torch.equal(reopened.table.keys, editor.table.keys)  # added at once on open, one by one while editing

    (store / "index" / "000002.safetensors").rename(store / "index" / "000009.safetensors")
    other = tmp_path / "other"
    make_editor("llama", store=other)  # an empty store: the index file names edits it does not hold
    (other / "index").mkdir()
    (store / "index" / "000009.safetensors").rename(other / "index" / "000001.safetensors")
    with pytest.raises(CorruptStoreError, match="indexes edits the journal does not record"):
        Store.open(other)


def test_a_bfloat16_model_edits_with_float32_factors_and_its_store_reopens(tiny_dir, tmp_path):
    """A large model is loaded in bfloat16 (`dtype=`, passed to transformers): the edit trains and routes there, its
    LoRA factors stay float32 buffers (stored as factor_dtype), unrelated inputs run the bfloat16 base model bit for
    bit, rollback is exact, and the store reopens with the same dtype (a float32 model is another model to it)."""
    config = tiny_config(tiny_dir, learning_rate=0.05, max_steps=300)
    store = tmp_path / "store"
    editor = Editor.from_pretrained(tiny_dir("llama"), config=config, store=store, dtype="bfloat16")
    assert editor.model.dtype == torch.bfloat16 and editor.layers[0].lora_A.dtype == torch.float32
    with editor.disabled():
        before = [editor.logits(p) for p in UNRELATED]
    edit = editor.edit("Who founded Acme?", "Jane Roe")
    assert edit.converged and editor.generate("Who founded Acme?") == "Jane Roe"
    assert all(torch.equal(editor.logits(p), b) for p, b in zip(UNRELATED, before))
    reopened = Editor.from_pretrained(tiny_dir("llama"), store=store, dtype=torch.bfloat16)
    assert torch.equal(reopened.logits("Who founded Acme?"), editor.logits("Who founded Acme?"))
    with pytest.raises(ModelMismatchError):
        Editor.from_pretrained(tiny_dir("llama"), store=store)
    reopened.rollback(edit.id)
    assert all(torch.equal(reopened.logits(p), b) for p, b in zip(UNRELATED, before))
    with pytest.raises(ConfigError, match="not a floating-point torch dtype"):
        Editor.from_pretrained(tiny_dir("llama"), dtype="int8")
