"""Load on `sola serve`: latency and throughput of POST /v1/ask with 1, 8, ... concurrent clients, at several numbers
of stored edits, against the same asks made in-process without the server; with `--engine vllm`, the same against
the server with vLLM behind it (side by side, one engine started for the run). Loopback only, bounded in requests and
seconds.

    python benchmarks/serve_load.py [--edits 0,10000] [--clients 1,8] [--requests 48] [--max-seconds 300]
                                    [--engine vllm] [--no-base] [--out docs/runs/experiments/serve-load.json]

An ask is what /v1/ask does: route the prompt, generate the edited answer and (unless --no-base) the base model's
answer (greedy, at most --tokens tokens, stopping at a newline). The stored edits are SYNTHETIC (as in
benchmarks/scale.py: random keys and factors of the real shapes, which no question routes to) plus one real edit that
half the questions reach, so both routed and unrouted asks are measured. Questions are NQ questions. The embedded
SmolLM2-135M-Instruct, raw prompts.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    from sola import EditConfig, Editor, batching
    from sola.data import load_dataset
    from sola.edit import Edit
    from sola.serve import EditService, open_service

    sys.path.insert(0, str(Path(__file__).parent))
    from scale import _split, synthetic_tensors

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", default="0,10000")
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--requests", type=int, default=48, help="asks per configuration")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=300, help="per configuration")
    parser.add_argument("--engine", choices=["vllm"], help="also measure the server with this engine behind it")
    parser.add_argument("--no-base", action="store_true", help="asks without the base model's answer")
    parser.add_argument("--out")
    args = parser.parse_args()
    questions = [r.prompt for r in load_dataset("nq").records[:24]]
    fact = ("Who founded the Acme Corporation?", "Jane Roe")
    prompts = [q for pair in zip(questions, [fact[0]] * len(questions)) for q in pair]  # every other one routed
    result = {"model": "embedded SmolLM2-135M-Instruct", "machine": {"platform": platform.platform(),
              "threads": torch.get_num_threads()}, "tokens": args.tokens, "requests": args.requests,
              "base_answers": not args.no_base, "runs": []}
    engine = None
    if args.engine:
        from sola.adapters import adapter_config
        from sola.serve.engine import VllmEngine

        engine = VllmEngine.start(adapter_config(Editor.from_pretrained())["base_model_name_or_path"], port=8766,
                                  max_lora_rank=8)
    try:
        for count in [int(x) for x in args.edits.split(",") if x]:
            root = Path(tempfile.mkdtemp(prefix="sola-serve-load-"))
            store = root / "store"
            editor = Editor.from_pretrained(config=EditConfig(prompt_format="raw"), store=store)
            generator, dim = torch.Generator().manual_seed(0), editor.router.keys.dim
            for i in range(count):
                record = Edit(id=editor.store.next_id(), prompts=(f"synthetic edit {i}",), target="x")
                batching.commit(editor, record, *_split(synthetic_tensors(editor, generator, dim)))
            editor.edit(*fact)
            del editor
            services = {"ours": open_service(store)}
            if engine is not None:
                from sola.serve.engine import Adapters

                reader = services["ours"].reader
                services["vllm"] = EditService(reader, services["ours"].writer,
                                               adapters=Adapters(engine, root / "adapters"))
            for name, service in services.items():
                result["runs"] += measure(service, name, count + 1, prompts, args)
    finally:
        if engine is not None:
            engine.stop()
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


def measure(service, name: str, edits: int, prompts: list[str], args) -> list[dict]:
    """In-process asks one at a time, then HTTP /v1/ask at each client count."""
    import httpx
    import uvicorn

    from sola.serve import create_app

    runs = []
    with_base = not args.no_base
    started, direct = time.perf_counter(), []
    for n in range(args.requests):  # the same prompts as the clients ask
        t = time.perf_counter()
        service.ask(prompts[n % len(prompts)], args.tokens, with_base=with_base)
        direct.append(time.perf_counter() - t)
    direct_s = time.perf_counter() - started
    runs.append({"server": name, "edits": edits, "clients": 0, "how": "in-process, no server", "asks": len(direct),
                 "p50_ms": quantile(direct, 0.5) * 1e3, "p99_ms": quantile(direct, 0.99) * 1e3,
                 "asks_per_s": len(direct) / direct_s})
    print(json.dumps(runs[-1]), flush=True)
    port = 8765
    server = uvicorn.Server(uvicorn.Config(create_app(service, token="x" * 32), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/v1/ask"
    for clients in [int(x) for x in args.clients.split(",") if x]:
        latencies: list[float] = []
        errors: list[int] = []
        deadline = time.perf_counter() + args.max_seconds
        issued = iter(range(args.requests))
        lock = threading.Lock()

        def client(deadline=deadline, lock=lock, issued=issued, latencies=latencies, errors=errors) -> None:
            with httpx.Client(timeout=600) as http:
                while time.perf_counter() < deadline:
                    with lock:
                        n = next(issued, None)
                    if n is None:
                        return
                    t = time.perf_counter()
                    response = http.post(url, json={"prompt": prompts[n % len(prompts)],
                                                    "max_new_tokens": args.tokens, "base": with_base})
                    latencies.append(time.perf_counter() - t)
                    if response.status_code != 200:
                        errors.append(response.status_code)

        started = time.perf_counter()
        workers = [threading.Thread(target=client) for _ in range(clients)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - started
        runs.append({"server": name, "edits": edits, "clients": clients, "how": "HTTP /v1/ask", "asks":
                     len(latencies), "errors": len(errors), "p50_ms": quantile(latencies, 0.5) * 1e3,
                     "p99_ms": quantile(latencies, 0.99) * 1e3, "asks_per_s": len(latencies) / wall})
        print(json.dumps(runs[-1]), flush=True)
    server.should_exit = True
    thread.join(10)
    return runs


if __name__ == "__main__":
    main()
