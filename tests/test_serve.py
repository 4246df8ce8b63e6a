"""`sola serve` over real HTTP on a tiny model: the CLI server as a user runs it (curl-like calls with httpx, the
`openai` client), tokens and errors, jobs and their events, asks during edits and rollbacks, and another process's
edits picked up."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import UNRELATED, tiny_config

from sola import Editor
from sola.errors import ConfigError
from sola.serve import create_app, open_service, read_or_create_token
from sola.serve.server import serve

FACT = ("Who founded Acme?", "Jane Roe")
OTHER = ("Which river flows through Cairo?", "the Danube")
TOKEN = "t" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_store(tiny_dir, path: Path) -> Path:
    Editor.from_pretrained(tiny_dir("llama"), config=tiny_config(tiny_dir), store=path)
    return path


class Server:
    """The app under uvicorn in a thread (a real HTTP server on a loopback port)."""

    def __init__(self, service, read_token: bool = False) -> None:
        import uvicorn

        self.service = service
        self.port = free_port()
        app = create_app(service, token=TOKEN, read_token=read_token)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth = {"Authorization": f"Bearer {TOKEN}"}

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def server(tiny_dir, tmp_path):
    store = make_store(tiny_dir, tmp_path / "store")
    running = Server(open_service(store, str(tiny_dir("llama"))))
    yield running
    running.stop()


def test_sola_serve_as_a_user_runs_it(tiny_dir, tmp_path, capsys, monkeypatch):
    """`sola serve --store s` in its own process, then HTTP calls as curl would make them and the openai client."""
    store = make_store(tiny_dir, tmp_path / "store")
    token_file = tmp_path / "token"
    port = free_port()
    env = {**os.environ, "SOLA_HOME": str(tmp_path / "home")}
    process = subprocess.Popen([sys.executable, "-m", "sola.cli", "serve", "--store", str(store), "--model",
                                str(tiny_dir("llama")), "--port", str(port), "--token-file", str(token_file)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.time() < deadline, "the server did not start"
            time.sleep(0.3)
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        before = httpx.post(f"{url}/v1/ask", json={"prompt": FACT[0]}).json()
        assert before["route"] is None and before["answer"] == before["base_answer"] != FACT[1]

        refused = httpx.post(f"{url}/v1/edits", json={"prompt": FACT[0], "target": FACT[1]})
        assert refused.status_code == 401 and refused.json()["error"] == "Unauthorized"
        wrong = httpx.post(f"{url}/v1/edits", json={"prompt": FACT[0], "target": FACT[1]},
                           headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and httpx.get(f"{url}/v1/edits").json()["edits"] == []

        made = httpx.post(f"{url}/v1/edits", json={"prompt": FACT[0], "target": FACT[1]}, headers=auth, timeout=120)
        assert made.status_code == 200
        edit_id = made.json()["edits"][0]["id"]
        asked = httpx.post(f"{url}/v1/ask", json={"prompt": FACT[0]}).json()
        assert asked["answer"] == FACT[1] and asked["base_answer"] == before["answer"]
        assert asked["route"]["edit_id"] == edit_id

        client = openai.OpenAI(base_url=f"{url}/v1", api_key=token)
        chat = client.chat.completions.create(model="sola", messages=[{"role": "user", "content": FACT[0]}])
        assert chat.choices[0].message.content == FACT[1]
        completion = client.completions.create(model="sola", prompt=FACT[0], max_tokens=16)
        assert completion.choices[0].text == FACT[1]

        # `sola ask` on the same store asks this server instead of loading the model (seconds saved per command)
        import sola.editor
        from sola.cli import main

        def no_model(*args, **kwargs):
            raise AssertionError("the model was loaded")

        monkeypatch.setenv("SOLA_HOME", str(tmp_path / "home"))
        monkeypatch.setattr(sola.editor, "load_model", no_model)
        assert main(["ask", FACT[0], "--store", str(store), "--json"]) == 0
        captured = capsys.readouterr()
        cli = json.loads(captured.out)
        assert cli["answer"] == FACT[1] and cli["route"]["edit"] == edit_id and cli["server"] == url
        assert "answered by the server" in captured.err
        monkeypatch.undo()

        assert httpx.delete(f"{url}/v1/edits/{edit_id}").status_code == 401
        undone = httpx.delete(f"{url}/v1/edits/{edit_id}", headers=auth, timeout=60)
        assert undone.status_code == 200 and undone.json()["rolled_back"]["id"] == edit_id
        after = httpx.post(f"{url}/v1/ask", json={"prompt": FACT[0]}).json()
        assert after["answer"] == before["answer"] and after["route"] is None
        metrics = httpx.get(f"{url}/metrics").text
        assert "sola_edits_total 1.0" in metrics and "sola_rollbacks_total 1.0" in metrics
        assert httpx.get(f"{url}/docs").status_code == 200
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert token not in output  # the token is never printed or logged
    assert str(token_file) in output
    from sola.serve.discovery import find, serving_file

    monkeypatch.setenv("SOLA_HOME", str(tmp_path / "home"))
    assert not serving_file(store).exists() and find(store) is None  # a stopped server is not asked


def test_bad_requests_are_json_errors_and_change_nothing(server):
    url, auth = server.url, server.auth
    cases = [
        (httpx.post(f"{url}/v1/edits", content=b"{not json", headers=auth), 400, "InvalidJSON"),
        (httpx.post(f"{url}/v1/edits", json={"prompt": FACT[0]}, headers=auth), 400, "RequestError"),
        (httpx.post(f"{url}/v1/edits", json={"prompt": "x" * 5000, "target": "y"}, headers=auth), 400, None),
        (httpx.post(f"{url}/v1/edits", json=[{"prompt": FACT[0], "target": FACT[1]}] * 65, headers=auth), 400,
         "SolaError"),
        (httpx.post(f"{url}/v1/edits", content=b"[" + b" " * (1 << 20) + b"]", headers=auth), 413,
         "PayloadTooLarge"),
        (httpx.delete(f"{url}/v1/edits/e99", headers=auth), 404, "UnknownEditError"),
        (httpx.get(f"{url}/v1/edits/e99"), 404, "UnknownEditError"),
        (httpx.post(f"{url}/v1/ask", json={"prompt": FACT[0], "max_new_tokens": 10_000}), 400, "InvalidRequest"),
        (httpx.post(f"{url}/v1/ask", json={"prompt": "Who founded " + "Acme and " * 300 + "?"}), 400,
         "InvalidEditError"),  # longer than an edit's prompt may be: the key encoder would read only its start
        (httpx.get(f"{url}/v1/jobs/j99"), 404, "UnknownJob"),
        (httpx.get(f"{url}/v1/nothing-here"), 404, "NotFound"),
        (httpx.put(f"{url}/v1/ask", json={}), 405, "MethodNotAllowed"),
    ]
    for response, status, error in cases:
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) == {"error", "message"} and body["message"]
        if error:
            assert body["error"] == error, body
    # the OpenAI-compatible paths answer errors in OpenAI's shape, keeping the message
    for response, status, message in [
        (httpx.post(f"{url}/v1/chat/completions", json={"messages": [], "model": "x"}), 400, "give {"),
        (httpx.post(f"{url}/v1/completions", json={"prompt": FACT[0], "n": 2}), 400, "n=2: answers are greedy"),
        (httpx.post(f"{url}/v1/completions", json={"prompt": FACT[0], "max_tokens": 0}), 400, "max_tokens must"),
    ]:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and message in error["message"], error
    # a batch with one bad request is refused whole, naming it
    batch = httpx.post(f"{url}/v1/edits", json=[{"prompt": FACT[0], "target": FACT[1]}, {"prompt": OTHER[0]}],
                       headers=auth)
    assert batch.status_code == 400 and "request 2" in batch.json()["message"]
    assert httpx.get(f"{url}/v1/edits").json()["edits"] == []
    assert httpx.get(f"{url}/healthz").json()["edits"] == 0


def test_an_async_edit_streams_its_progress_and_a_batch_commits_in_order(server):
    url, auth = server.url, server.auth
    job = httpx.post(f"{url}/v1/edits", json={"prompt": FACT[0], "target": FACT[1], "async": True}, headers=auth)
    assert job.status_code == 202
    events = []
    with httpx.stream("GET", f"{url}{job.json()['events']}", timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
    assert events[0] == "queued" and "started" in events and "progress" in events and events[-1] == "committed"
    state = httpx.get(f"{url}/v1/jobs/{job.json()['job']}").json()
    assert state["state"] == "done" and state["result"][0]["target"] == FACT[1]
    batch = httpx.post(f"{url}/v1/edits", json=[{"prompt": OTHER[0], "target": OTHER[1]},
                                                {"prompt": FACT[0], "target": "John Doe"}], headers=auth, timeout=120)
    edits = batch.json()["edits"]
    assert [e["target"] for e in edits] == [OTHER[1], "John Doe"] and edits[1]["supersedes"] == "e1"
    history = httpx.get(f"{url}/v1/edits?history=1").json()
    assert sorted([e["id"] for e in chain] for chain in history["chains"]) == [["e1", "e3"], ["e2"]]


def test_asks_during_edits_and_rollbacks_see_the_state_before_or_after_never_between(server):
    url, auth = server.url, server.auth
    prompts = [FACT[0], OTHER[0], UNRELATED[0]]
    base = {p: httpx.post(f"{url}/v1/ask", json={"prompt": p}).json()["answer"] for p in prompts}
    allowed = {FACT[0]: {base[FACT[0]], FACT[1]}, OTHER[0]: {base[OTHER[0]], OTHER[1]},
               UNRELATED[0]: {base[UNRELATED[0]]}}
    stop, seen, failures = threading.Event(), [], []

    def client(n: int) -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                prompt = prompts[len(seen) % len(prompts)]
                response = http.post(f"{url}/v1/ask", json={"prompt": prompt})
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                seen.append((prompt, response.json()["answer"], response.json()["route"]))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(2):
            first = httpx.post(f"{url}/v1/edits", json={"prompt": FACT[0], "target": FACT[1]}, headers=auth,
                               timeout=120).json()["edits"][0]["id"]
            second = httpx.post(f"{url}/v1/edits", json={"prompt": OTHER[0], "target": OTHER[1]}, headers=auth,
                                timeout=120).json()["edits"][0]["id"]
            assert httpx.delete(f"{url}/v1/edits/{first}", headers=auth, timeout=60).status_code == 200
            assert httpx.delete(f"{url}/v1/edits/{second}", headers=auth, timeout=60).status_code == 200
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    assert not failures
    assert len(seen) >= 8
    for prompt, answer, route in seen:
        assert answer in allowed[prompt], (prompt, answer)
        assert (route is not None) == (answer != base[prompt])  # routed exactly when the edit answers


def test_another_processs_edits_reach_the_server(server, tiny_dir):
    """An editor outside the server commits to the same store; the server's asks pick it up (refresh)."""
    outside = Editor.from_pretrained(tiny_dir("llama"), store=server.service.reader.store.path)
    edit = outside.edit(*OTHER)
    deadline = time.time() + 10
    while time.time() < deadline:
        answer = httpx.post(f"{server.url}/v1/ask", json={"prompt": OTHER[0]}).json()
        if answer["route"] is not None:
            break
        time.sleep(0.3)
    assert answer["answer"] == OTHER[1] and answer["route"]["edit_id"] == edit.id
    # and the server's own next edit gets the next id, after the outside one
    made = httpx.post(f"{server.url}/v1/edits", json={"prompt": FACT[0], "target": FACT[1]}, headers=server.auth,
                      timeout=120)
    assert made.json()["edits"][0]["id"] == "e2"


def test_read_token_protects_reads_and_tokens_are_checked_at_start(tiny_dir, tmp_path):
    store = make_store(tiny_dir, tmp_path / "store")
    protected = Server(open_service(store, str(tiny_dir("llama")), single_model=True), read_token=True)
    try:
        assert httpx.post(f"{protected.url}/v1/ask", json={"prompt": FACT[0]}).status_code == 401
        assert httpx.get(f"{protected.url}/v1/edits").status_code == 401
        assert httpx.post(f"{protected.url}/v1/ask", json={"prompt": FACT[0]}, headers=protected.auth,
                          timeout=60).status_code == 200
        assert httpx.get(f"{protected.url}/healthz").status_code == 200
    finally:
        protected.stop()
    created, new = read_or_create_token(tmp_path / "t" / "token")
    assert new and len(created) >= 32 and (tmp_path / "t" / "token").stat().st_mode & 0o777 == 0o600
    assert read_or_create_token(tmp_path / "t" / "token") == (created, False)
    (tmp_path / "t" / "token").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_or_create_token(tmp_path / "t" / "token")
    with pytest.raises(ConfigError, match="reachable from other machines"):
        serve(store, str(tiny_dir("llama")), host="0.0.0.0", log=lambda *_: None)


def test_a_long_running_server_forgets_its_oldest_finished_jobs(tiny_dir, tmp_path, monkeypatch):
    import sola.serve.service as service_module

    monkeypatch.setattr(service_module, "KEPT_JOBS", 2)
    service = open_service(make_store(tiny_dir, tmp_path / "store"), str(tiny_dir("llama")), single_model=True)
    jobs = [service.submit_edits([{"prompt": p, "target": t}]) for p, t in (FACT, OTHER)]
    for job in jobs:
        service.wait(job)
    third = service.submit_edits([{"prompt": FACT[0], "target": "John Doe"}])
    service.wait(third)
    assert service.job(jobs[0].id) is None and service.job(jobs[1].id) is jobs[1] and service.job(third.id) is third


def test_a_bug_is_a_500_internal_error_not_the_callers_fault(server, monkeypatch):
    url, auth = server.url, server.auth

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(server.service.writer, "edit", broken)
    made = httpx.post(f"{url}/v1/edits", json={"prompt": FACT[0], "target": FACT[1]}, headers=auth, timeout=60)
    assert made.status_code == 500 and made.json() == {"error": "InternalError", "message": "RuntimeError: boom"}
    job = httpx.post(f"{url}/v1/edits", json={"prompt": FACT[0], "target": FACT[1], "async": True}, headers=auth)
    with httpx.stream("GET", f"{url}{job.json()['events']}", timeout=60) as stream:
        lines = list(stream.iter_lines())
    assert "event: failed" in lines
    failed = lines[lines.index("event: failed") + 1]
    assert '"error": "InternalError"' in failed and "RuntimeError: boom" in failed
    monkeypatch.setattr(server.service.reader, "generate", broken)
    asked = httpx.post(f"{url}/v1/ask", json={"prompt": FACT[0]})
    assert asked.status_code == 500 and asked.json()["error"] == "InternalError"
    refused = httpx.post(f"{url}/v1/edits", json={"prompt": " ", "target": FACT[1]}, headers=auth)
    assert refused.status_code == 400  # the caller's mistake stays a 400
    assert httpx.get(f"{url}/v1/edits").json()["edits"] == []


def test_the_openai_client_streams_an_edited_fact_and_shows_our_errors(server):
    url, auth = server.url, server.auth
    httpx.post(f"{url}/v1/edits", json={"prompt": FACT[0], "target": FACT[1]}, headers=auth, timeout=120)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    whole = client.chat.completions.create(model="sola", messages=[{"role": "user", "content": FACT[0]}])
    assert whole.choices[0].message.content == FACT[1] and whole.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="sola", messages=[{"role": "user", "content": FACT[0]}],
                                                 stream=True))
    assert len(chunks) >= 3 and chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == FACT[1]
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert chunks[-1].model_extra["sola"]["route"]["edit_id"] == "e1"
    cut = client.completions.create(model="sola", prompt=UNRELATED[0], max_tokens=2)
    assert cut.choices[0].finish_reason == "length"  # max_tokens stopped it
    with httpx.stream("POST", f"{url}/v1/completions", json={"prompt": FACT[0], "stream": True}) as stream:
        lines = [line for line in stream.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    assert "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1]) == FACT[1]
    with pytest.raises(openai.BadRequestError, match="answers are greedy"):
        client.chat.completions.create(model="sola", messages=[{"role": "user", "content": FACT[0]}], n=2)
    page = httpx.get(f"{url}/docs")
    assert page.status_code == 200 and "/v1/chat/completions" in page.text and "cdn" not in page.text.lower()


def test_an_engine_that_is_missing_or_not_running_is_one_clear_error(tiny_dir, tmp_path, monkeypatch):
    from sola.serve.engine import find_engine_python

    monkeypatch.setenv("SOLA_VLLM_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(ConfigError, match="is not a Python here.*make engine-vllm"):
        find_engine_python()
    store = make_store(tiny_dir, tmp_path / "store")
    with pytest.raises(ConfigError, match=f"no vLLM server answers at http://127.0.0.1:{(port := free_port())}"):
        open_service(store, str(tiny_dir("llama")), engine_url=f"http://127.0.0.1:{port}")


def test_a_server_computes_the_key_search_of_a_large_store_before_its_first_ask(tiny_dir, tmp_path):
    """Above `approximate_search_from` keys the whole-table search needs the keys' sign codes (seconds at 10^6 keys):
    the server computes them when it opens the store, not at its first ask."""
    store = tmp_path / "store"
    editor = Editor.from_pretrained(tiny_dir("llama"), store=store, config=tiny_config(
        tiny_dir, key="encoder", approximate_search_from=1))
    editor.edit(*FACT)
    assert editor.table.approximates and "key_codes" not in editor.info()["memory_bytes"]  # lazily, in a library
    for single_model in (False, True):
        service = open_service(store, str(tiny_dir("llama")), single_model=single_model)
        assert service.reader.info()["memory_bytes"]["key_codes"] > 0
        assert service.ask(FACT[0], 8, with_base=False)["answer"] == FACT[1]
