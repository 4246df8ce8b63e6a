"""One contract over every registered editing method and every model family it supports: the edit is generated;
inputs that reach no edit compute the base model bit for bit where the method claims it (`unrouted_is_base`); save ->
load reproduces outputs; rollback restores the state before the edit exactly where the method claims it
(`exact_rollback`), and otherwise refuses (`RollbackNotSupportedError`, nothing changed), is exact in the cases the
method documents, or says what it could not undo (`Edit.note`); bad input raises the library's errors and changes
nothing.

Every method registered with `sola.methods.register_method` gets the whole suite on the families its registration's
`TinySettings` name, with its settings there."""

from __future__ import annotations

import pytest
import torch
from conftest import EDITS, UNRELATED

from sola import ConfigError, Editor, InvalidEditError, UnknownEditError
from sola.methods import Method, RollbackNotSupportedError, TinySettings, register_method, registered

CASES = [(name, family) for name, m in registered().items() for family in m.tiny.families]


def test_a_method_is_registered_once_under_its_name():
    sola = registered()["sola"]
    assert sola.editor is Editor and register_method(sola) is sola  # the same registration again: nothing changes
    with pytest.raises(ConfigError, match="a method named 'sola' is registered already"):
        register_method(Method(name="sola", editor=Editor, config=sola.config, summary="another",
                               tiny=TinySettings(families=())))
    assert registered()["sola"] is sola


def make(tiny_dir, method: str, family: str, device: str = "cpu"):
    registration = registered()[method]
    if device == "cpu":
        return registration.editor.from_pretrained(str(tiny_dir(family)), config=registration.tiny_config(family))
    if registration.editor is not Editor:
        pytest.skip(f"{method} takes no device= yet: only SoLA's cases run on {device}")
    return Editor.from_pretrained(str(tiny_dir(family)), config=registration.tiny_config(family), device=device)


def load(method: str, path, tiny_dir, family):
    return registered()[method].editor.load(path, model=tiny_dir(family))


def logits(editor, prompts):
    """Logits on each prompt (teacher-forced on a fixed target for seq2seq, which needs one)."""
    target = "Paris" if editor.task.kind == "seq2seq" else None
    return [editor.logits(p, target) for p in prompts]


def same(left, right) -> bool:
    return all(torch.equal(a, b) for a, b in zip(left, right, strict=True))


def facts(editor):
    return EDITS["classification" if editor.task.kind == "classification" else "causal"]


@pytest.fixture(params=CASES, ids=[f"{m}-{f}" for m, f in CASES])
def case(request, tiny_dir, device):
    method, family = request.param
    return method, family, make(tiny_dir, method, family, device)


def test_an_edit_is_generated(case):
    method, _, editor = case
    prompt, target = facts(editor)[0]
    edit = editor.edit(prompt, target)
    tokens = registered()[method].tiny.answer_tokens
    if tokens is None:
        assert edit.converged and editor.generate(prompt, max_new_tokens=12) == target
    else:
        answer = editor.score([prompt], [target])[0]
        assert answer.predicted[:tokens] == answer.tokens[:tokens]


def test_inputs_that_reach_no_edit_are_the_base_model(case):
    method, _, editor = case
    if not editor.unrouted_is_base:
        pytest.skip(f"{method} does not claim it (documented in docs/methods.md)")
    base = logits(editor, UNRELATED)
    for prompt, target in facts(editor):
        editor.edit(prompt, target)
    assert all(editor.route(p) is None for p in UNRELATED)
    assert same(logits(editor, UNRELATED), base)
    with editor.disabled():
        assert same(logits(editor, UNRELATED), base)


def test_save_then_load_reproduces_outputs(case, tiny_dir, tmp_path):
    method, family, editor = case
    for prompt, target in facts(editor):
        editor.edit(prompt, target)
    probes = [p for p, _ in facts(editor)] + UNRELATED
    expected = logits(editor, probes)
    editor.save(tmp_path / "saved")
    loaded = load(method, tmp_path / "saved", tiny_dir, family)
    assert same(logits(loaded, probes), expected)
    assert [e.id for e in loaded.edits()] == [e.id for e in editor.edits()]


def test_rollback_is_exact_where_claimed_and_otherwise_refused_or_noted(case):
    method, _, editor = case
    (first, first_target), (second, second_target) = facts(editor)
    probes = [first, second] + UNRELATED
    editor.edit(first, first_target)
    before = logits(editor, probes)
    made = editor.edit(second, second_target)
    after = logits(editor, probes)
    try:
        rolled = editor.rollback(made.id)
    except RollbackNotSupportedError:
        assert not editor.exact_rollback
        assert same(logits(editor, probes), after) and editor.get(made.id).live  # refused: nothing changed
        return
    assert not rolled.live and made.id not in [e.id for e in editor.edits()]
    if editor.exact_rollback:
        assert same(logits(editor, probes), before)
    else:  # exact in the cases the method documents (MELO: an edit alone in its cluster), or it says what is left
        assert same(logits(editor, probes), before) or rolled.note


def test_bad_input_raises_and_changes_nothing(case):
    method, _, editor = case
    prompt, target = facts(editor)[0]
    editor.edit(prompt, target)
    probes = [prompt] + UNRELATED
    expected = logits(editor, probes)
    with pytest.raises(InvalidEditError, match="prompt is empty"):
        editor.edit("", target)
    with pytest.raises(InvalidEditError, match="target is empty"):
        editor.edit(prompt, "  ")
    with pytest.raises(UnknownEditError, match="'e99'"):
        editor.rollback("e99")
    assert [e.id for e in editor.edits()] == ["e1"]
    assert same(logits(editor, probes), expected)


def raw_logits(model, tokenizer, prompts):
    """The model's own forward pass, without any editor (seq2seq: one decoder step from the start token)."""
    out = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt")
        if model.config.is_encoder_decoder:
            inputs["decoder_input_ids"] = torch.full((1, 1), model.config.decoder_start_token_id)
        with torch.no_grad():
            out.append(model(**inputs).logits)
    return out


def anatomy(model):
    """What `close()` must give back: every module's name, type, mode and hooks, every parameter's flag and bits."""
    modules = [(name, type(m).__name__, m.training, len(m._forward_pre_hooks), len(m._forward_hooks))
               for name, m in model.named_modules()]
    return modules, [(name, p.requires_grad) for name, p in model.named_parameters()], model.state_dict()


def test_close_takes_the_editor_off_its_model(case, tiny_dir):
    from sola import EditorClosedError
    from sola.loading import load_model

    method, family, editor = case
    _, untouched, tokenizer = load_model(str(tiny_dir(family)))  # the same model, never handed to an editor
    prompt, target = facts(editor)[0]
    editor.edit(prompt, target)
    model = editor.model
    assert anatomy(model)[0] != anatomy(untouched)[0]  # wrapped while the editor is on it
    editor.close()
    (modules, flags, state), (modules_0, flags_0, state_0) = anatomy(model), anatomy(untouched)
    assert modules == modules_0 and flags == flags_0
    assert state.keys() == state_0.keys() and all(torch.equal(state[k], state_0[k]) for k in state)
    probes = [prompt] + UNRELATED
    assert same(raw_logits(model, tokenizer, probes), raw_logits(untouched, tokenizer, probes))
    with pytest.raises(EditorClosedError, match="closed"):
        editor.generate(prompt)
    with pytest.raises(EditorClosedError, match="closed"):
        editor.edit(prompt, target)
    editor.close()  # a second close changes nothing


def test_an_editor_used_as_a_context_manager_closes_on_leaving(tiny_dir):
    with make(tiny_dir, "sola", "llama") as editor:
        model = editor.model
        assert editor.config.key == "mean_pool"  # keys read inside the model: a hook on its first edited layer
        assert any(len(m._forward_pre_hooks) for m in model.modules())
        assert any(type(m).__name__ == "RoutedLoraLayer" for m in model.modules())
    assert not any(type(m).__name__ == "RoutedLoraLayer" for m in model.modules())
    assert not any(len(m._forward_pre_hooks) or len(m._forward_hooks) for m in model.modules())
