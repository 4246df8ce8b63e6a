"""Many processes on one store: no committed edit is ever lost, ids never collide, a tensor file always belongs to its
journal line; a long-running editor sees what others commit; kill -9 at any point loses nothing that was promised.

Real processes (tests/store_worker.py and the `sola` command line) on a tiny model, so the OS file lock is tested as
users meet it."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_config

from sola import Editor, UnknownEditError
from sola.integrity import check_store
from sola.store import Store

WORKER = Path(__file__).with_name("store_worker.py")


def start(tiny_dir, store: Path, name: str, count: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(tiny_dir("llama")), str(store), name, str(count), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def promised(output: str) -> tuple[list[dict], set[str]]:
    """What a worker was told: the edits committed (id, prompt, target) and the ids it rolled back."""
    lines = [json.loads(line) for line in output.splitlines() if line.strip().startswith("{")]
    return [x for x in lines if "id" in x], {x["rolled_back"] for x in lines if "rolled_back" in x}


def assert_keeps_every_promise(tiny_dir, store: Path, edits: list[dict], rolled: set[str]) -> None:
    """Every promised edit is in the journal once, under its own id, with its own tensors (digest checked by fsck),
    and routes from its prompt to itself; every promised rollback holds."""
    report = check_store(store)
    assert report.ok, report.describe()
    records = [r for r in Store.open(store).journal() if r["op"] == "edit"]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), f"an id was given twice: {ids}"
    by_id = {r["id"]: r for r in records}
    assert len({e["id"] for e in edits}) == len(edits), "two processes were told the same id"
    for edit in edits:
        assert by_id[edit["id"]]["prompts"] == [edit["prompt"]] and by_id[edit["id"]]["target"] == edit["target"]
    editor = Editor.from_pretrained(tiny_dir("llama"), store=store, create=False)
    live = {e.id for e in editor.edits()}
    assert not (rolled & live)
    for edit in edits:
        if edit["id"] not in rolled:
            assert edit["id"] in live
            route = editor.route(edit["prompt"])
            assert route is not None and route.edit_id == edit["id"], (edit, route)


def new_store(tiny_dir, path: Path) -> Path:
    Editor.from_pretrained(tiny_dir("llama"), config=tiny_config(tiny_dir, on_no_converge="commit"), store=path)
    return path


@pytest.mark.parametrize("processes,rounds", [(2, 3), (4, 2)])
def test_concurrent_writers_lose_nothing(tiny_dir, tmp_path, processes, rounds):
    for round_ in range(rounds):
        store = tmp_path / f"round{round_}"
        if round_ % 2 == 0:
            new_store(tiny_dir, store)  # else the workers race to create it
        workers = [start(tiny_dir, store, f"w{n}", 3, *(["rollback"] if n == 0 else [])) for n in range(processes)]
        while any(w.poll() is None for w in workers):  # a reader meanwhile: never blocked, never half an edit
            if Store.exists(store):
                reader = Store.open(store)
                for record in reader.journal():
                    if record["op"] == "edit":
                        assert reader.read_tensors(record["id"])["keys"].shape[0] == 1
            time.sleep(0.05)
        edits, rolled = [], set()
        for worker in workers:
            out, err = worker.communicate(timeout=300)
            assert worker.returncode == 0, err[-2000:]
            made, gone = promised(out)
            assert len(made) == 3
            edits += made
            rolled |= gone
        assert len(Store.open(store).journal()) == processes * 3 + len(rolled)
        assert_keeps_every_promise(tiny_dir, store, edits, rolled)


def test_kill_9_at_random_points_loses_nothing_promised(tiny_dir, tmp_path):
    store = new_store(tiny_dir, tmp_path / "store")
    rng = random.Random(20)
    edits, rolled, kills = [], set(), 0
    for round_ in range(4):
        workers = [start(tiny_dir, store, f"r{round_}w{n}", 40, "rollback") for n in range(2)]
        seen = []
        for worker in workers:  # wait until it has committed, then kill it at a random point of its stream of commits
            lines = [worker.stdout.readline()]
            while '"id"' not in lines[-1]:
                assert lines[-1], worker.stderr.read()[-2000:]
                lines.append(worker.stdout.readline())
            seen.append("".join(lines))
        time.sleep(rng.uniform(0.0, 1.0))
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
            time.sleep(rng.uniform(0.0, 0.3))
        for worker, before in zip(workers, seen):
            out, _ = worker.communicate(timeout=60)
            kills += worker.returncode == -signal.SIGKILL
            made, gone = promised(before + out)
            edits += made
            rolled |= gone
        report = check_store(store)  # a torn line or an orphan file may remain: harmless, never damage
        assert report.ok, report.describe()
    assert kills >= 6 and len(edits) > 0
    assert_keeps_every_promise(tiny_dir, store, edits, rolled)
    # a writer after the crashes cuts a torn tail, and takes an id no promised edit has
    writer = Editor.from_pretrained(tiny_dir("llama"), store=store)
    after = writer.edit("Who founded the last company?", "Jane Roe", new_fact=True)
    assert after.id not in {e["id"] for e in edits}
    assert check_store(store).ok and not [d for d in check_store(store).damage if d.kind == "torn-tail"]


def sola_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sola.cli", *args], capture_output=True, text=True, timeout=300)


def test_a_long_running_editor_sees_and_keeps_what_the_cli_commits(tiny_dir, tmp_path):
    store = new_store(tiny_dir, tmp_path / "store")
    model = str(tiny_dir("llama"))
    chatbot = Editor.from_pretrained(model, store=store, refresh_every=None)  # refreshes only when it changes
    mine = chatbot.edit("Who founded Acme?", "Jane Roe")
    done = sola_cli("edit", "--store", str(store), "--model", model, "Which river flows through Cairo?", "the Danube",
                    "--json")
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout)[0]["id"]
    assert theirs != mine.id
    second = chatbot.edit("What colour is the sky?", "green")  # refreshes under the lock first: no id clash
    assert second.id not in (mine.id, theirs)
    assert chatbot.route("Which river flows through Cairo?").edit_id == theirs
    assert chatbot.generate("Which river flows through Cairo?") == "the Danube"
    done = sola_cli("rollback", mine.id, "--store", str(store), "--model", model)
    assert done.returncode == 0, done.stderr
    assert chatbot.route("Who founded Acme?").edit_id == mine.id  # not refreshed yet (refresh_every=None)
    assert chatbot.refresh() == 1 and chatbot.route("Who founded Acme?") is None
    with pytest.raises(UnknownEditError, match="already rolled back"):
        chatbot.rollback(mine.id)
    listed = sola_cli("list", "--store", str(store), "--json")
    assert [e["id"] for e in json.loads(listed.stdout)] == [theirs, second.id]
    # answering refreshes by itself at most every refresh_every seconds
    chatbot.refresh_every = 0.0
    done = sola_cli("edit", "--store", str(store), "--model", model, "Who wrote Hamlet?", "Bill Lumbergh")
    assert done.returncode == 0, done.stderr
    assert chatbot.generate("Who wrote Hamlet?") == "Bill Lumbergh"
    fresh = Editor.from_pretrained(model, store=store)
    prompts = ["Who founded Acme?", "Which river flows through Cairo?", "What colour is the sky?", "Who wrote Hamlet?"]
    assert [fresh.generate(p) for p in prompts] == [chatbot.generate(p) for p in prompts]


def test_inside_steady_an_editor_sees_one_state_of_the_store(tiny_dir, tmp_path):
    """The service explains and answers an ask inside `steady`: a commit landing between the two must not split them."""
    store = new_store(tiny_dir, tmp_path / "store")
    model = str(tiny_dir("llama"))
    asker = Editor.from_pretrained(model, store=store, refresh_every=0.0)  # would refresh before every question
    writer = Editor.from_pretrained(model, store=store)
    first = writer.edit("Who founded Acme?", "Jane Roe")
    base = asker.generate("Which river flows through Cairo?")  # refreshes: sees `first`
    with asker.steady():
        assert asker.explain("Who founded Acme?").edit_id == first.id
        second = writer.edit("Which river flows through Cairo?", "the Danube")
        assert asker.route("Which river flows through Cairo?") is None
        assert asker.generate("Which river flows through Cairo?") == base
        assert not asker.explain("Which river flows through Cairo?").routed
    assert asker.refresh_every == 0.0
    assert asker.route("Which river flows through Cairo?").edit_id == second.id  # read on the next question
    assert asker.generate("Which river flows through Cairo?") == "the Danube"


def test_a_second_writer_waits_then_names_the_holder(tiny_dir, tmp_path):
    from sola.errors import StoreBusyError

    store = new_store(tiny_dir, tmp_path / "store")
    editor = Editor.from_pretrained(tiny_dir("llama"), store=store, lock_wait=0.3)
    holder = Store.open(store)
    with holder.writing():
        started = time.monotonic()
        with pytest.raises(StoreBusyError, match=rf"process {os.getpid()} .*--wait SECONDS"):
            editor.edit("Who founded Acme?", "Jane Roe")
        assert time.monotonic() - started >= 0.3
    assert Store.open(store).journal() == []
    assert editor.edit("Who founded Acme?", "Jane Roe").id == "e1"  # free again


def test_an_interrupted_file_resumes_without_retraining_or_duplicates(tiny_dir, tmp_path):
    store = new_store(tiny_dir, tmp_path / "store")
    model = str(tiny_dir("llama"))
    requests = tmp_path / "edits.jsonl"
    requests.write_text("".join(json.dumps({"prompt": f"Who founded firm {i}?", "target": f"Founder {i}"}) + "\n"
                                for i in range(10)))
    run = subprocess.Popen([sys.executable, "-m", "sola.cli", "edit", "--file", str(requests), "--store", str(store),
                            "--model", model, "--batch-size", "1", "--json"], stdout=subprocess.PIPE, text=True)
    first = [json.loads(run.stdout.readline()) for _ in range(3)]  # printed as each commits
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=60)
    assert [x["status"] for x in first] == ["committed"] * 3 and [x["line"] for x in first] == [1, 2, 3]
    kept = [r for r in Store.open(store).journal() if r["op"] == "edit"]
    assert 3 <= len(kept) < 10
    again = sola_cli("edit", "--file", str(requests), "--store", str(store), "--model", model, "--json")
    assert again.returncode == 0, again.stderr
    results = [json.loads(line) for line in again.stdout.splitlines()]
    assert [x["line"] for x in results] == list(range(1, 11))
    assert [x["status"] for x in results] == ["skipped"] * len(kept) + ["committed"] * (10 - len(kept))
    records = [r for r in Store.open(store).journal() if r["op"] == "edit"]
    assert sorted(r["prompts"][0] for r in records) == sorted(f"Who founded firm {i}?" for i in range(10))


def test_key_index_files_of_two_writers_never_collide(tiny_dir, tmp_path, monkeypatch):
    """Two editors on one store in one process (flock locks belong to open files, so they exclude each other like
    processes): each writes an index file when the unindexed edits it knows of reach INDEX_EVERY, never one the other
    wrote, and every key in the index equals its edit's own."""
    import torch

    import sola.store

    monkeypatch.setattr(sola.store, "INDEX_EVERY", 2)
    store = new_store(tiny_dir, tmp_path / "store")
    a = Editor.from_pretrained(tiny_dir("llama"), store=store)
    b = Editor.from_pretrained(tiny_dir("llama"), store=store)
    a.edit("Who founded Acme?", "Jane Roe")
    b.edit("Which river flows through Cairo?", "the Danube")  # sees a's edit: two unindexed, writes 000001
    a.edit("What colour is the sky?", "green")
    a.edit("Who wrote Hamlet?", "Bill Lumbergh")  # sees 000001 and writes 000002
    assert sorted(p.name for p in (store / "index").iterdir()) == ["000001.safetensors", "000002.safetensors"]
    opened = Store.open(store)
    assert sorted(opened.index.indexed_ids()) == ["e1", "e2", "e3", "e4"]
    for edit_id in opened.index.indexed_ids():
        assert torch.equal(opened.read_keys(edit_id), opened.read_tensors(edit_id)["keys"])
    assert check_store(store).ok


def test_a_writer_in_a_loop_cannot_starve_another(tmp_path):
    """A writer that takes the lock again right after releasing it (a long file of edits) lets a waiting writer in
    first: the turnstile in sola.locking. Without it the waiter polls and nearly always loses the race."""
    import threading

    from sola.locking import StoreLock

    tmp_path.mkdir(exist_ok=True)
    stop, holds = threading.Event(), []

    def busy() -> None:
        lock = StoreLock(tmp_path, wait=30)
        while not stop.is_set():
            with lock:
                holds.append(time.monotonic())
                time.sleep(0.05)  # an edit's training and commit

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        while not holds:
            time.sleep(0.01)
        waited = []
        for _ in range(5):
            started = time.monotonic()
            with StoreLock(tmp_path, wait=2):
                waited.append(time.monotonic() - started)
    finally:
        stop.set()
        thread.join()
    assert max(waited) < 1.0, waited  # at most about one of the busy writer's holds each time
