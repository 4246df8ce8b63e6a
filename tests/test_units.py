"""The pieces on their own: the routed layer, the key table, the master decision, prompt formats, key strategies."""

from __future__ import annotations

import pytest
import torch
from conftest import UNRELATED, edits_for, tiny_config
from torch import nn
from transformers.pytorch_utils import Conv1D

from sola import ConfigError, EditConfig, Editor, InvalidEditError
from sola.nn import Decision, RoutedLoraLayer
from sola.routing import KeyTable


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_unrouted_rows_are_bit_identical_and_routed_rows_add_their_own_lora(kind):
    torch.manual_seed(0)
    base = nn.Linear(6, 5) if kind == "linear" else Conv1D(5, 6)
    decision = Decision()
    layer = RoutedLoraLayer(base, rank=2, scaling=0.5, decision=decision)
    layer.grow(3)
    factors = [(torch.randn(2, 6), torch.randn(5, 2)) for _ in range(3)]
    for slot, (A, B) in enumerate(factors):
        layer.write_slot(slot, A, B)
    x = torch.randn(4, 3, 6)
    expected_base = base(x)
    decision.fix(torch.tensor([-1, 2, -1, 0]))
    out = layer(x)
    assert torch.equal(out[0], expected_base[0]) and torch.equal(out[2], expected_base[2])
    for row, slot in ((1, 2), (3, 0)):
        A, B = factors[slot]
        torch.testing.assert_close(out[row], expected_base[row] + 0.5 * (x[row] @ A.T @ B.T))
    decision.clear()
    assert torch.equal(layer(x), expected_base)


def test_key_table_search_is_exact_beyond_25_rows():
    torch.manual_seed(0)
    table = KeyTable(16, "euclidean")
    keys = torch.randn(300, 16) * 100
    for slot, key in enumerate(keys):
        table.add(key, slot)
    queries = keys[:40] + 1e-4  # nearly identical: the matmul formula of cdist loses these in rounding
    dist, slots = table.nearest(queries)
    assert torch.equal(slots, torch.arange(40))
    naive = (queries.double() - keys[:40].double()).norm(dim=1)
    torch.testing.assert_close(dist.double(), naive, atol=1e-6, rtol=1e-3)
    assert torch.equal(table.route(queries, threshold=1e-5), torch.full((40,), -1))
    assert table.remove_slot(3) == 1 and len(table) == 299


def test_cosine_table_and_empty_table():
    table = KeyTable(None, "cosine")
    assert table.nearest(torch.ones(2, 3))[1].tolist() == [-1, -1]
    table.add(torch.tensor([[1.0, 0.0, 0.0]]), 7)
    dist, slots = table.nearest(torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert slots.tolist() == [7, 7] and dist[0].item() == pytest.approx(0.0) and dist[1].item() == pytest.approx(1.0)


@pytest.mark.parametrize("key", ["mean_pool", "last_token", "encoder"])
def test_every_key_strategy_edits_and_routes(make_editor, key):
    editor = make_editor("llama", key=key)
    for prompt, target in edits_for(editor):
        editor.edit(prompt, target)
    for (prompt, target), edit in zip(edits_for(editor), editor.edits()):
        assert editor.generate(prompt) == target
        route = editor.route(prompt)
        assert route.edit_id == edit.id and route.distance < 1e-3
    assert all(editor.route(p) is None for p in UNRELATED)


def test_route_is_decided_once_per_input_and_held_for_every_generated_token(make_editor, monkeypatch):
    editor = make_editor("llama")
    prompt, target = edits_for(editor)[0]
    editor.edit(prompt, target)
    calls, forwards = [], []
    original = editor.router.route_hidden
    monkeypatch.setattr(editor.router, "route_hidden", lambda h, m: calls.append(h.shape) or original(h, m))
    editor.model.register_forward_hook(lambda *_: forwards.append(editor.decision.slots.tolist()))
    assert editor.generate(prompt, max_new_tokens=10) == target
    assert len(calls) == 1 and calls[0][1] == len(editor.format.encode(prompt).ids)  # from the prompt alone
    assert len(forwards) > 2 and all(slots == forwards[0] for slots in forwards)  # held for every token
    assert editor.decision.slots is None  # and released afterwards


def test_teacher_forced_target_tokens_do_not_take_part_in_routing(make_editor):
    editor = make_editor("llama", key="last_token")
    prompt, target = edits_for(editor)[0]
    editor.edit(prompt, target)
    logits = editor.logits(prompt, target)
    expected = editor.task.encode_target(prompt, target)
    n = len(editor.format.encode(prompt).ids)
    assert logits[n - 1: n - 1 + len(expected)].argmax(-1).tolist() == expected


def test_several_prompts_make_one_edit_with_one_key_each(make_editor):
    editor = make_editor("llama")
    edit = editor.edit(["Who founded Acme?", "Who is the CEO of Initech?"], "Jane Roe")
    assert len(editor.table) == 2 and len(editor.edits()) == 1
    assert editor.generate("Who is the CEO of Initech?") == "Jane Roe"
    assert editor.route("Who is the CEO of Initech?").edit_id == edit.id
    editor.rollback(edit.id)
    assert len(editor.table) == 0


def test_chat_format_routes_on_the_user_text_only(make_editor):
    editor = make_editor("llama", prompt_format="chat")
    encoded = editor.format.encode("Who founded Acme?")
    content = [t for t, c in zip(encoded.ids, encoded.content) if c]
    assert editor.tokenizer.decode(content) == "Who founded Acme?"
    assert len(encoded.ids) > len(content)  # the template's scaffolding is there but not routed on
    editor.edit("Who founded Acme?", "Jane Roe")
    assert editor.generate("Who founded Acme?") == "Jane Roe"


def test_calibrated_threshold_admits_at_most_the_chosen_fraction(make_editor):
    editor = make_editor("llama", key="encoder", threshold=None)
    for prompt, target in edits_for(editor):
        editor.edit(prompt, target)
    unrelated = UNRELATED + ["What is the capital of France?", "Who wrote it?", "When was the company started?",
                             "Which team won the cup in 2010?", "The mother tongue of Danielle Darrieux is"]
    threshold = editor.calibrate_threshold(unrelated, max_activation_rate=0.0)
    assert editor.config.threshold == threshold
    assert sum(editor.route(p) is not None for p in unrelated) == 0
    assert editor.route(edits_for(editor)[0][0]) is not None


def test_config_errors_name_the_fix(tiny_dir):
    with pytest.raises(ConfigError, match="key='nope' is not a key strategy"):
        EditConfig(key="nope")  # on construction, not first when an editor uses it
    with pytest.raises(ConfigError, match="rank=0 must be a positive integer"):
        EditConfig().replace(rank=0)
    from sola.methods import GraceConfig

    with pytest.raises(ConfigError, match="radius=-1 must be positive"):
        GraceConfig(radius=-1)
    with pytest.raises(ConfigError, match="Euclidean distances have no default threshold"):
        EditConfig(distance="euclidean").resolved_threshold()
    with pytest.raises(ConfigError, match="not modules of this model; names look like"):
        Editor.from_pretrained(tiny_dir("llama"), config=tiny_config(tiny_dir, layers=["model.nothing"]))
    with pytest.raises(InvalidEditError, match="needs a prompt"):
        Editor.from_pretrained(tiny_dir("llama"), config=tiny_config(tiny_dir)).edit_many([{"question_x": 1}])


def test_edit_many_accepts_easyedit_and_zsre_field_names(make_editor):
    editor = make_editor("llama")
    done = editor.edit_many([{"prompt": "Who founded Acme?", "target_new": "Jane Roe"},
                             {"src": "Which river flows through Cairo?", "alt": "the Danube", "subject": "Cairo"}])
    assert [e.target for e in done] == ["Jane Roe", "the Danube"] and done[1].subject == "Cairo"


def test_edits_are_deterministic(make_editor):
    first, second = make_editor("llama"), make_editor("llama")
    prompt, target = edits_for(first)[0]
    a, b = first.edit(prompt, target), second.edit(prompt, target)
    assert (a.steps, a.loss) == (b.steps, b.loss)
    assert torch.equal(first.logits(prompt), second.logits(prompt))


def test_a_hub_id_that_is_not_cached_gives_a_clear_error():
    from sola import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="hubs cannot be reached from here; download it elsewhere"):
        Editor.from_pretrained("nobody-here/no-such-model")


def test_two_stage_cosine_search_finds_what_the_full_scan_finds():
    from sola.routing.table import TWO_STAGE_FROM

    generator = torch.Generator().manual_seed(0)
    base = torch.randn(TWO_STAGE_FROM + 500, 32, generator=generator)
    table = KeyTable(32, "cosine")
    for slot, key in enumerate(base):
        table.add(key, slot)
    # near-ties: copies of keys nudged by less than half precision can tell apart, but float32 can
    # (with only the best half-precision score as candidate, 17 of these 200 queries pick the wrong key)
    for slot in range(200):
        table.add(base[slot] + 3e-3 * torch.randn(32, generator=generator), 10_000 + slot)
    table.remove_slot(7)
    queries = torch.cat([base[:200] + 3e-2 * torch.randn(200, 32, generator=generator),
                         torch.randn(60, 32, generator=generator)])
    dist, slots = table.nearest(queries)
    full = table.distances(queries)
    full_dist, index = full.min(dim=1)
    torch.testing.assert_close(dist, full_dist, rtol=0, atol=1e-6)
    runner_up = full.topk(2, dim=1, largest=False).values[:, 1]
    clear = runner_up - full_dist > 1e-6  # where float32 rounding cannot decide, either key is the nearest
    assert int(clear.sum()) >= 240
    assert torch.equal(slots[clear], table.slots[index][clear])


def test_cosine_distance_is_never_negative():
    """A key against itself can round to 1 - <k, k> = -1.2e-7; a distance shown to users (explain) and compared across
    runs never goes below 0, in the full scan and in the two-stage search of large tables."""
    from sola.routing.table import TWO_STAGE_FROM

    keys = torch.randn(TWO_STAGE_FROM + 10, 384, generator=torch.Generator().manual_seed(1))
    table = KeyTable(384, "cosine")
    for slot, key in enumerate(keys):
        table.add(key, slot)
    raw = 1.0 - table.keys[:200] @ table.keys[:200].T  # what the distance was before the clamp
    assert bool((raw.diagonal() < 0).any())  # the case exists on these keys
    dist, slots = table.nearest(keys[:200])
    assert bool((dist >= 0).all()) and bool((dist < 1e-6).all())
    assert torch.equal(slots, torch.arange(200))
    assert bool((table.distances(keys[:50]) >= 0).all())


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_keys_that_tie_within_rounding_go_to_the_oldest(distance):
    """Two edits of the same prompt have the same key; rounding (block position, thread count) must not choose."""
    generator = torch.Generator().manual_seed(1)
    keys = torch.randn(6, 16, generator=generator)
    table = KeyTable(16, distance)
    for slot, key in enumerate(keys):
        table.add(key, slot)
    table.add(keys[2] * (1 + 1e-7), 40)  # the same key again, up to rounding, added later
    table.add(keys[4], 41)
    queries = torch.stack([keys[2], keys[4], keys[2] + 1e-3 * torch.randn(16, generator=generator)])
    dist, slots = table.nearest(queries)
    assert slots.tolist() == [2, 4, 2]
    assert table.nearest_among(keys[4], [4, 41]) == (pytest.approx(float(dist[1]), abs=1e-5), 4)


def test_prefix_contexts_add_training_rows_but_no_keys(make_editor):
    editor = make_editor("llama", prefix_contexts=2)
    plan = editor.planner.plan(editor.planner.check("Who founded Acme?", "Jane Roe"))
    assert [p.text for p in plan.training] == ["Who founded Acme?", "Here is a fact. Who founded Acme?",
                                                  "I read this somewhere. Who founded Acme?"]
    edit = editor.edit("Who founded Acme?", "Jane Roe")
    assert edit.converged and editor.generate("Who founded Acme?") == "Jane Roe"
    assert len(editor.table) == 1  # the prompt's key only
    plain = make_editor("llama")
    plain.edit("Who founded Acme?", "Jane Roe")
    assert not torch.equal(editor.layers[0].lora_B[0], plain.layers[0].lora_B[0])  # trained on more rows
    with pytest.raises(ConfigError, match="prefix_contexts=9 must be between 0 and 8"):
        make_editor("llama", prefix_contexts=9)


def test_a_calibration_prompt_at_the_calibrated_distance_does_not_route(make_editor, tiny_dir):
    """key="subject" reports whole-prompt distances (edits without a subject) on the subject key's scale; scaling must
    not move a distance equal to unnamed_threshold under threshold (in float32, 0.30008 * (0.6 / 0.30008) is
    0.59999996)."""
    import torch

    unnamed = float(torch.tensor(0.30008))  # a float32 distance, as calibration returns it
    editor = make_editor("llama", key="subject", encoder=str(tiny_dir("encoder")), threshold=0.6,
                         unnamed_threshold=unnamed)
    assert float(torch.tensor(unnamed) * (0.6 / unnamed)) < 0.6  # the rounding this guards against
    whole = torch.tensor([unnamed, float(torch.nextafter(torch.tensor(unnamed), torch.tensor(0.0))), 0.1, 0.9])
    scaled = editor.router.on_subject_scale(whole)
    assert (scaled < 0.6).tolist() == [False, True, True, False]
    editor.edit("Who founded Acme?", "Jane Roe")  # no subject: reached by the whole prompt
    prompts = ["What colour is the sky?", "Who wrote Hamlet?", "The quick brown fox jumps over the lazy dog.",
               "Which river flows through Cairo?", "Who is the CEO of Initech?"]
    threshold = editor.calibrate_threshold(prompts, max_activation_rate=0.2)
    assert editor.info()["unnamed_threshold"] == threshold
    routed = [editor.route(p) is not None for p in prompts]
    assert sum(routed) <= 1  # at most 20 % of 5: the prompt at the calibrated distance itself stays unrouted


def test_sgd_means_the_cosine_decayed_sgd_for_every_method_and_minimise_stops_at_the_bound():
    """One optimiser for every method's training: "sgd" decays its step by a cosine over max_steps (SoLA's train_edits,
    ELDER and GRACE all call make_optimizer); "adam" keeps a constant step. minimise stops when the objective says it
    converged or after max_steps steps, whichever comes first."""
    from types import SimpleNamespace

    from sola.methods import ElderConfig, GraceConfig
    from sola.training import make_optimizer, minimise

    for config in (EditConfig(optimizer="sgd", learning_rate=0.4, max_steps=10),
                   GraceConfig(optimizer="sgd", learning_rate=0.4, max_steps=10),
                   ElderConfig(optimizer="sgd", learning_rate=0.4, max_steps=10)):
        weight = nn.Parameter(torch.ones(2))
        optimizer, schedule = make_optimizer([weight], config)
        rates = []
        for _ in range(10):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        assert rates[0] == pytest.approx(0.4) and rates[5] == pytest.approx(0.2) and rates[9] < 0.01
    optimizer, schedule = make_optimizer([nn.Parameter(torch.ones(2))], GraceConfig(optimizer="adam"))
    assert isinstance(optimizer, torch.optim.Adam) and schedule is None

    weight = nn.Parameter(torch.tensor([3.0]))
    config = SimpleNamespace(optimizer="adam", learning_rate=0.5, max_steps=100)
    steps, converged = minimise(lambda: ((weight ** 2).sum(), float(weight.detach().abs()) < 0.5), [weight], config)
    assert converged and 0 < steps < 100 and float(weight.detach().abs()) < 0.5
    steps, converged = minimise(lambda: (((weight - 10) ** 2).sum(), False), [weight],
                                SimpleNamespace(optimizer="sgd", learning_rate=0.01, max_steps=7))
    assert (steps, converged) == (7, False)


def test_lookups_among_a_few_edits_read_their_rows_and_agree_with_the_whole_table():
    """`nearest_of`/`nearest_among`/`keys_of` read only the candidates' rows (their ranges, rebuilt after a removal);
    they must give what a scan of the whole table gives, through adds and removals."""
    from sola.routing.table import KeyTable

    torch.manual_seed(0)
    table = KeyTable(16, "cosine")
    table.add_rows(torch.randn(30, 16), torch.arange(30) // 3)  # slots 0-9, three keys each, in bulk
    table.add(torch.randn(2, 16), 42)
    table.add(torch.randn(1, 16), 7)  # a second batch of keys for slot 7: two ranges
    query = torch.randn(16)

    def reference(slots):
        dist = table.distances(query.reshape(1, -1))[0]
        return {s: float(dist[table.slots == s].min()) for s in slots if bool((table.slots == s).any())}

    for step in range(3):
        wanted = [7, 42, 3, 99]
        assert table.nearest_of(query, wanted) == pytest.approx(reference(wanted), abs=1e-6)
        best = min(reference(wanted).items(), key=lambda item: item[1])
        assert table.nearest_among(query, wanted) == (pytest.approx(best[1], abs=1e-6), best[0])
        assert torch.equal(table.keys_of(7), table.keys[table.slots == 7]) and len(table.keys_of(7)) == 4
        table.remove_slot([3, 42, 5][step])  # removal shifts every later row
    assert table.nearest_of(query, [3, 42]) == {} and table.nearest_among(query, [3, 42]) == (float("inf"), -1)
