"""The whole-table key search through sign codes (`sola.routing.signcodes`): the same answers as the exact search,
never a route the exact search would refuse, exact rollback, ties to the oldest key, and the config that turns it on."""

from __future__ import annotations

import pytest
import torch

from sola import EditConfig
from sola.errors import ConfigError
from sola.routing import signcodes
from sola.routing.table import KeyTable

DIM = 384


def unit(rows: int, generator: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(rows, DIM, generator=generator), dim=-1)


def moved(keys: torch.Tensor, distance: float, generator: torch.Generator) -> torch.Tensor:
    """Unit vectors at cosine distance `distance` from each of `keys`."""
    noise = torch.randn(keys.shape, generator=generator)
    noise = torch.nn.functional.normalize(noise - (noise * keys).sum(1, keepdim=True) * keys, dim=-1)
    return (1 - distance) * keys + (1 - (1 - distance) ** 2) ** 0.5 * noise


def tables(keys: torch.Tensor, slots: torch.Tensor) -> tuple[KeyTable, KeyTable]:
    """(exact, approximate) tables of the same keys."""
    exact, approximate = KeyTable(DIM, "cosine", approximate_from=None), KeyTable(DIM, "cosine", approximate_from=1)
    for table in (exact, approximate):
        table.add_rows(keys, slots)
    return exact, approximate


def nearest(table: KeyTable, queries: torch.Tensor) -> list[tuple[float, int]]:
    found = [table.nearest(q.reshape(1, -1)) for q in queries]  # one input at a time, as routing asks
    return [(float(d[0]), int(s[0])) for d, s in found]


def test_approximate_search_answers_as_the_exact_search():
    generator = torch.Generator().manual_seed(0)
    keys = unit(20000, generator)
    exact, approximate = tables(keys, torch.arange(20000))
    assert approximate.approximates and not exact.approximates
    picked = keys[torch.randint(0, 20000, (60,), generator=generator)]
    queries = torch.cat([moved(picked[i::6], d, generator) for i, d in enumerate((0.0, 0.1, 0.25, 0.4, 0.5, 0.58))])
    assert nearest(approximate, queries) == nearest(exact, queries)  # same edit, same distance to the bit
    assert approximate.codes_nbytes == 20000 * signcodes.BITS // 8


def test_too_few_candidates_miss_but_never_route_what_the_exact_search_refuses(monkeypatch):
    """With one candidate the codes miss the nearest key often; each answer is still a real key's exact distance, so
    it is never nearer than the exact answer and never under a threshold the exact answer is not under."""
    monkeypatch.setattr(signcodes, "CANDIDATES", 1)
    generator = torch.Generator().manual_seed(1)
    keys = unit(5000, generator)
    keys[1::2] = moved(keys[0::2], 0.05, generator)  # crowded: every key has another at distance 0.05
    exact, approximate = tables(keys, torch.arange(5000))
    queries = moved(keys[torch.randint(0, 5000, (200,), generator=generator)], 0.35, generator)
    found, truth = nearest(approximate, queries), nearest(exact, queries)
    assert sum(a[1] != e[1] for a, e in zip(found, truth)) > 0  # the test can tell a miss
    for query, (distance, slot), (best, _) in zip(queries, found, truth):
        assert distance >= best and distance == approximate.nearest_among(query, [slot])[0]
    for threshold in (0.3, 0.35, 0.4):
        routed = approximate.route(queries, threshold)
        allowed = exact.route(queries, threshold)
        assert bool(((routed >= 0) <= (allowed >= 0)).all())


def test_rollback_removes_a_key_from_the_approximate_search():
    generator = torch.Generator().manual_seed(2)
    keys = unit(3000, generator)
    slots = torch.arange(3000) // 3  # three keys an edit
    exact, approximate = tables(keys, slots)
    nearest(approximate, keys[:1])  # the codes exist from here on, and follow adds and removals
    for table in (exact, approximate):
        assert table.remove_slot(500) == 3
    assert all(slot != 500 for _, slot in nearest(approximate, keys[1500:1503]))
    extra = unit(10, generator)
    for table in (exact, approximate):
        table.add_rows(extra, torch.full((10,), 2000))
    probes = torch.cat([keys[:1500], keys[1503:], extra])
    assert [s for _, s in nearest(approximate, probes)] == [int(s) for s in torch.cat([slots[:1500], slots[1503:],
                                                                                       torch.full((10,), 2000)])]
    queries = moved(probes[::7], 0.3, generator)
    assert nearest(approximate, queries) == nearest(exact, queries)


def test_ties_go_to_the_key_added_first():
    generator = torch.Generator().manual_seed(3)
    keys = unit(2000, generator)
    keys[1700] = keys[300]  # the same prompt edited twice: slots 300 and 1700
    exact, approximate = tables(keys, torch.arange(2000))
    query = moved(keys[300:301], 0.2, generator)
    assert nearest(approximate, query) == nearest(exact, query)
    assert nearest(approximate, query)[0][1] == 300


def test_the_search_switches_at_the_configured_size():
    generator = torch.Generator().manual_seed(4)
    table = KeyTable(DIM, "cosine", approximate_from=100)
    table.add_rows(unit(99, generator), torch.arange(99))
    assert not table.approximates
    table.add_rows(unit(1, generator), torch.tensor([99]))
    assert table.approximates
    assert not KeyTable(DIM, "euclidean", approximate_from=1).approximates  # sign codes rank angles only


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "many"])
def test_a_bad_search_size_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="approximate_search_from"):
        EditConfig(approximate_search_from=bad)


def test_an_editor_routes_and_rolls_back_alike_with_the_approximate_search(make_editor, tiny_dir, tmp_path):
    """Whole-prompt keys through the real encoder: the same routes with the search forced approximate as exact, and
    rollback restores the base model's logits bit for bit; an editor opening the store may choose its search."""
    facts = [("Who founded Acme?", "Ada Lovelace"), ("What is the capital of Zubrowka?", "Lutz"),
             ("Which river flows through Quahog?", "Pawtucket")]
    asks = [p for p, _ in facts] + ["Who was the founder of Acme?", "Name Zubrowka's capital.", "How tall is Everest?"]
    settings = dict(key="encoder", encoder=None, threshold=0.40, max_steps=1, on_no_converge="commit")
    exact = make_editor("llama", approximate_search_from=None, **settings)
    approximate = make_editor("llama", store=tmp_path / "store", approximate_search_from=1, **settings)
    base = [approximate.logits(p) for p in asks]
    made = [(exact.edit(p, t), approximate.edit(p, t)) for p, t in facts]
    assert approximate.router.table.approximates and not exact.router.table.approximates
    order = [{e.id: n for n, e in enumerate(editor.edits())} for editor in (exact, approximate)]
    routes = [[r and (r.distance, ids[r.edit_id]) for r in (editor.route(p) for p in asks)]
              for editor, ids in zip((exact, approximate), order)]
    assert routes[0] == routes[1] and sum(r is not None for r in routes[1]) >= 3
    assert approximate.info()["key_search"].startswith("sign codes") and exact.info()["key_search"] == "exact"
    assert approximate.info()["memory_bytes"]["key_codes"] > 0 and "key_codes" not in exact.info()["memory_bytes"]
    for _, edit in made:
        approximate.rollback(edit.id)
    assert all(torch.equal(approximate.logits(p), b) for p, b in zip(asks, base))
    approximate.close()
    reopened = make_editor("llama", store=tmp_path / "store", approximate_search_from=None, **settings)
    assert reopened.config.approximate_search_from is None and not reopened.router.table.approximates
