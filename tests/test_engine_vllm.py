"""`sola serve` with vLLM behind SoLA's router, on the embedded model: the engine (vLLM's CPU build, in the environment
`make engine-vllm` creates; `.ci/run` creates it) is started by the test. Greedy answers through the engine are the
editor's own, token for token, for routed and unrouted questions in both prompt formats; an edit is answered through
the engine as soon as its request returns; after a rollback returns, no answer uses the edit."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from test_serve import TOKEN, Server, free_port

from sola import EditConfig, Editor
from sola.serve.engine import Adapters, VllmEngine, engine_python_exists
from sola.serve.service import EditService

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not engine_python_exists(), reason="vLLM is not installed here: `make engine-vllm` creates "
                       ".venv-vllm (.ci/run does); this test needs it"),
]
FACTS = json.loads((Path(__file__).parent / "data" / "made_up_facts.json").read_text())


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from sola.adapters import adapter_config

    probe = Editor.from_pretrained()
    running = VllmEngine.start(adapter_config(probe)["base_model_name_or_path"], port=free_port(), max_lora_rank=8)
    yield running
    running.stop()


@pytest.mark.parametrize("prompt_format", ["chat", "raw"])
def test_answers_through_the_engine_are_the_editors_token_for_token(engine, tmp_path, prompt_format):
    editor = Editor.from_pretrained(config=EditConfig(prompt_format=prompt_format), store=tmp_path / "store")
    facts = FACTS["facts"][:20]
    editor.edit_many([{"prompt": f["prompt"], "target": f["target"]} for f in facts])
    service = EditService(editor, adapters=Adapters(engine, tmp_path / "adapters"))
    questions = [f["prompt"] for f in facts] + FACTS["unrelated"] + [f["others"][1] for f in facts]
    routed = unrouted = 0
    for question in questions:
        through = service.ask(question, 24, with_base=False)
        assert through["answer"] == editor.generate(question, 24, stop_at_newline=True), question
        routed += through["route"] is not None
        unrouted += through["route"] is None
    assert routed >= 20 and unrouted >= 20, (routed, unrouted)


def test_an_edit_is_served_when_its_request_returns_and_a_rollback_stops_it_at_once(engine, tmp_path):
    store = tmp_path / "store"
    editor = Editor.from_pretrained(store=store)
    service = EditService(editor, adapters=Adapters(engine, tmp_path / "adapters"))
    server = Server(service)
    url, auth = server.url, {"Authorization": f"Bearer {TOKEN}"}
    fact = FACTS["facts"][0]
    try:
        base = httpx.post(f"{url}/v1/ask", json={"prompt": fact["prompt"], "base": False}, timeout=120).json()
        made = httpx.post(f"{url}/v1/edits", json={"prompt": fact["prompt"], "target": fact["target"]},
                          headers=auth, timeout=300)
        committed = time.perf_counter()
        edit_id = made.json()["edits"][0]["id"]
        asked = httpx.post(f"{url}/v1/ask", json={"prompt": fact["prompt"], "base": False}, timeout=120).json()
        answered_within = time.perf_counter() - committed
        assert asked["answer"] == fact["target"] and asked["route"]["edit_id"] == edit_id
        assert answered_within < 2.0, answered_within  # the adapter was loaded before the edit request returned
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")  # an app streaming a chat completion
        chunks = client.chat.completions.create(model="sola", messages=[{"role": "user", "content": fact["prompt"]}],
                                                stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == fact["target"]

        stop, seen = threading.Event(), []

        def ask_repeatedly() -> None:
            with httpx.Client(timeout=120) as http:
                while not stop.is_set():
                    sent = time.perf_counter()
                    reply = http.post(f"{url}/v1/ask", json={"prompt": fact["prompt"], "base": False}).json()
                    seen.append((sent, reply["answer"], reply["route"]))

        asker = threading.Thread(target=ask_repeatedly)
        asker.start()
        time.sleep(1.0)
        assert httpx.delete(f"{url}/v1/edits/{edit_id}", headers=auth, timeout=120).status_code == 200
        returned = time.perf_counter()
        time.sleep(2.0)
        stop.set()
        asker.join(120)
        after = [(answer, route) for sent, answer, route in seen if sent > returned]
        assert after and all(route is None and answer == base["answer"] for answer, route in after)
        assert service.adapters.name(edit_id) not in engine.loaded
    finally:
        server.stop()
