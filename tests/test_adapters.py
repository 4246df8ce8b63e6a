"""Edits as PEFT LoRA adapters, checked with the real `peft` library: an exported edit loaded by
`peft.PeftModel.from_pretrained` on the base model computes what the editor computes for inputs routed to that edit;
an adapter made elsewhere imports as an edit that is routed and rolled back like any other."""

from __future__ import annotations

import json

import peft  # a dev dependency: the round trips are checked with the real library
import pytest
import torch
from conftest import UNRELATED
from safetensors.torch import load_file, save_file

from sola import Editor, InvalidEditError, NotConvergedError
from sola.loading import load_model

FACT = ("Who founded Acme?", "Jane Roe")
OTHER = ("Which river flows through Cairo?", "the Danube")
TOLERANCE = 1e-4  # float32: the editor adds the LoRA with index_add on routed rows, PEFT adds it to every row


def _peft_logits(directory, model_dir, prompt_ids):
    _, base, _ = load_model(str(model_dir))
    model = peft.PeftModel.from_pretrained(base, str(directory)).eval()
    with torch.no_grad():
        return model(input_ids=prompt_ids).logits[0]


def _ids(editor, prompt, target):
    encoded = editor.encode(prompt)
    return torch.tensor([encoded.ids + editor.task.encode_target(prompt, target)])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_an_exported_edit_loaded_by_peft_gives_the_editors_logits(make_editor, tiny_dir, tmp_path, family):
    editor = make_editor(family)
    edit = editor.edit(*FACT)
    editor.edit(*OTHER)
    directory = editor.export_peft(edit.id, tmp_path / "adapter")
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == editor.config.rank
    assert config["target_modules"] == editor.config.layers
    assert config["lora_alpha"] / config["r"] == editor.config.scaling
    assert config["fan_in_fan_out"] == (family == "gpt2")
    ids = _ids(editor, *FACT)
    with torch.no_grad():
        ours = editor.logits(*FACT)
    theirs = _peft_logits(directory, tiny_dir(family), ids)
    assert ours.shape == theirs.shape
    assert float((ours - theirs).abs().max()) < TOLERANCE
    # the adapter is this edit's: the base model's logits differ from it
    with editor.disabled(), torch.no_grad():
        base = editor.logits(*FACT)
    assert float((base - theirs).abs().max()) > 100 * TOLERANCE


def test_import_then_export_gives_the_same_tensors_and_the_edit_routes_and_rolls_back(make_editor, tmp_path):
    source = make_editor("llama")
    trained = source.edit(*FACT)
    exported = source.export_peft(trained.id, tmp_path / "exported")

    editor = make_editor("llama")
    with editor.disabled():
        before = [editor.logits(p) for p in UNRELATED + [FACT[0]]]
    edit = editor.import_peft(exported, FACT[0], FACT[1])
    assert edit.converged and edit.note.startswith("imported from the PEFT adapter")
    assert editor.route(FACT[0]).edit_id == edit.id and editor.generate(FACT[0]) == FACT[1]
    again = editor.export_peft(edit.id, tmp_path / "again")
    a, b = load_file(exported / "adapter_model.safetensors"), load_file(again / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    editor.rollback(edit.id)
    after = [editor.logits(p) for p in UNRELATED + [FACT[0]]]
    assert all(torch.equal(x, y) for x, y in zip(before, after))


def test_an_adapter_with_another_alpha_imports_rescaled_and_one_that_does_not_fit_changes_nothing(make_editor,
                                                                                                   tmp_path):
    source = make_editor("llama")
    exported = source.export_peft(source.edit(*FACT).id, tmp_path / "exported")
    # the same LoRA written with lora_alpha doubled and B halved: the same function
    config = json.loads((exported / "adapter_config.json").read_text())
    weights = load_file(exported / "adapter_model.safetensors")
    scaled = tmp_path / "scaled"
    scaled.mkdir()
    (scaled / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": config["lora_alpha"] * 2}))
    save_file({k: v / 2 if "lora_B" in k else v for k, v in weights.items()}, str(scaled / "adapter_model.safetensors"))
    editor = make_editor("llama")
    assert editor.generate(FACT[0]) != FACT[1]
    editor.import_peft(scaled, FACT[0], FACT[1])
    assert editor.generate(FACT[0]) == FACT[1]

    other_rank = tmp_path / "rank"
    other_rank.mkdir()
    (other_rank / "adapter_config.json").write_text(json.dumps({**config, "r": config["r"] + 1}))
    save_file(weights, str(other_rank / "adapter_model.safetensors"))
    wrong_layers = tmp_path / "layers"
    wrong_layers.mkdir()
    (wrong_layers / "adapter_config.json").write_text(json.dumps(config))
    save_file({k.replace(source.config.layers[0], "model.elsewhere"): v for k, v in weights.items()},
              str(wrong_layers / "adapter_model.safetensors"))
    for directory, message in ((other_rank, "rank r="), (wrong_layers, "has no LoRA for"),
                               (tmp_path / "missing", "not a PEFT adapter directory")):
        with pytest.raises(InvalidEditError, match=message):
            editor.import_peft(directory, OTHER[0], OTHER[1])
        assert len(editor.edits()) == 1 and editor.route(OTHER[0]) is None


def test_export_all_writes_the_answering_adapters_and_the_routing_table(make_editor, tmp_path):
    editor = make_editor("llama")
    first = editor.edit(*FACT)
    update = editor.edit(FACT[0], "John Doe")  # supersedes the first: its keys now lead to the update's adapter
    other = editor.edit(*OTHER)
    from sola.adapters import export_all

    router = export_all(editor, tmp_path / "all")
    assert router["adapters"] == [update.id, other.id]
    assert sorted(p.name for p in (tmp_path / "all" / "adapters").iterdir()) == sorted([update.id, other.id])
    assert {e["id"]: e["adapter"] for e in router["edits"]} == {first.id: update.id, update.id: update.id,
                                                                other.id: other.id}
    table = load_file(tmp_path / "all" / "router.safetensors")
    assert table["keys"].shape[0] == len(table["adapter"]) == 3
    assert [router["adapters"][i] for i in table["adapter"].tolist()] == [update.id, update.id, other.id]
    routes = editor.route_many([FACT[0], OTHER[0], UNRELATED[0]])
    assert [r.edit_id if r else None for r in routes] == [update.id, other.id, None]


def test_sola_export_and_sola_route_on_a_store(tiny_dir, tmp_path, capsys):
    """As a user types them: export one edit, export all, route prompts (arguments and a file), and the errors."""
    from conftest import tiny_config

    from sola.cli import main

    store = tmp_path / "store"
    editor = Editor.from_pretrained(tiny_dir("llama"), config=tiny_config(tiny_dir), store=store)
    first, other = editor.edit(*FACT), editor.edit(*OTHER)
    common = ["--store", str(store), "--model", str(tiny_dir("llama"))]

    def sola(*args):
        code = main([*args, *common])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, _ = sola("export", first.id, "--out", str(tmp_path / "one"), "--json")
    assert code == 0 and json.loads(out)["edit"] == first.id
    assert (tmp_path / "one" / "adapter_model.safetensors").is_file()
    code, out, _ = sola("export", "--all", "--out", str(tmp_path / "all"))
    assert code == 0 and "2 adapters" in out and (tmp_path / "all" / "router.json").is_file()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{OTHER[0]}\n\n{UNRELATED[0]}\n")
    code, out, _ = sola("route", FACT[0], "--file", str(prompts), "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["adapter"] for r in rows] == [first.id, other.id, None]
    assert [r["prompt"] for r in rows] == [FACT[0], OTHER[0], UNRELATED[0]]
    code, out, _ = sola("route", FACT[0])
    assert out.startswith(f"{first.id}  (distance ")
    for args, message in ((("export", "--out", str(tmp_path / "x")), "give an edit ID"),
                          (("export", "e99", "--out", str(tmp_path / "y")), "'e99' does not exist"),
                          (("export", "--all", "--out", str(tmp_path / "all")), "not empty"),
                          (("route",), "give PROMPT")):
        code, _, err = sola(*args)
        assert code == 2 and message in err
    assert not (tmp_path / "y").exists()


def test_the_multi_lora_example_plans_one_adapter_per_prompt(tiny_dir, tmp_path, capsys):
    """examples/multi_lora_routing.py up to the engine call (--dry-run): each planned request names the adapter
    directory of the edit its prompt is routed to, and that directory is a PEFT adapter of that edit."""
    import importlib.util
    from pathlib import Path

    from conftest import tiny_config

    path = Path(__file__).parent.parent / "examples" / "multi_lora_routing.py"
    spec = importlib.util.spec_from_file_location("multi_lora_routing", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    store = tmp_path / "store"
    editor = Editor.from_pretrained(tiny_dir("llama"), config=tiny_config(tiny_dir), store=store)
    first = editor.edit(*FACT)
    example.main([FACT[0], UNRELATED[0], "--store", str(store), "--out", str(tmp_path / "out"), "--dry-run"])
    requests = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["adapter"] for r in requests] == [first.id, None] and requests[0]["lora_int_id"] == 1
    weights = load_file(Path(requests[0]["path"]) / "adapter_model.safetensors")
    exported = load_file(editor.export_peft(first.id, tmp_path / "direct") / "adapter_model.safetensors")
    assert all(torch.equal(weights[k], exported[k]) for k in exported)


def test_an_editor_with_edits_imports_an_adapter_and_one_that_misses_its_target_is_refused(make_editor, tmp_path):
    """Measuring an adapter used to assign a plain tensor where an earlier edit's training had left a parameter slot:
    any editor that had made an edit crashed (TypeError)."""
    source = make_editor("llama")
    exported = source.export_peft(source.edit(*OTHER).id, tmp_path / "exported")
    editor = make_editor("llama")
    editor.edit(*FACT)
    imported = editor.import_peft(exported, OTHER[0], OTHER[1])
    assert imported.converged and editor.generate(OTHER[0]) == OTHER[1] and editor.generate(FACT[0]) == FACT[1]
    wrong = ("What colour is the sky?", "green")  # the adapter was not trained for this: refused, as edit() refuses
    with pytest.raises(NotConvergedError, match="does not reproduce 'green'.*nothing was stored"):
        editor.import_peft(exported, *wrong)
    assert [e.target for e in editor.edits()] == [FACT[1], OTHER[1]] and editor.route(wrong[0]) is None
    editor.config = editor.config.replace(on_no_converge="commit")
    kept = editor.import_peft(exported, *wrong)
    assert not kept.converged and editor.route(wrong[0]).edit_id == kept.id
