"""Load on `sola serve`: latency and throughput of POST /v1/ask with 1 and 8 concurrent clients, at 0 and 10,000 stored
edits, against the same asks made in-process without the server. Loopback only, bounded in requests and seconds.

    python benchmarks/serve_load.py [--edits 0,10000] [--clients 1,8] [--requests 48] [--max-seconds 300]
                                    [--out docs/runs/experiments/serve-load.json]

An ask is what /v1/ask does: route the prompt, generate the edited answer and the base model's answer (greedy, at most
--tokens tokens, stopping at a newline). The stored edits are SYNTHETIC (as in benchmarks/scale.py: random keys and
factors of the real shapes, which no question routes to) plus one real edit that half the questions reach, so both
routed and unrouted asks are measured. Questions are NQ questions. The embedded SmolLM2-135M-Instruct, raw prompts.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from pathlib import Path

import torch


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    import httpx

    from sola import EditConfig, Editor, batching
    from sola.data import load_dataset
    from sola.edit import Edit
    from sola.serve import create_app, open_service

    sys_path = Path(__file__).parent
    import sys

    sys.path.insert(0, str(sys_path))
    from scale import _split, synthetic_tensors

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", default="0,10000")
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--requests", type=int, default=48, help="asks per configuration")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=300, help="per configuration")
    parser.add_argument("--out")
    args = parser.parse_args()
    questions = [r.prompt for r in load_dataset("nq").records[:24]]
    fact = ("Who founded the Acme Corporation?", "Jane Roe")
    prompts = [q for pair in zip(questions, [fact[0]] * len(questions)) for q in pair]  # every other one routed
    result = {"model": "embedded SmolLM2-135M-Instruct", "machine": {"platform": platform.platform(),
              "threads": torch.get_num_threads()}, "tokens": args.tokens, "requests": args.requests, "runs": []}
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
        service = open_service(store)
        import uvicorn

        port = 8765
        server = uvicorn.Server(uvicorn.Config(create_app(service, token="x" * 32), host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1/ask"
        # without the server: the same asks, one at a time, in-process
        started, direct = time.perf_counter(), []
        for n in range(args.requests):  # the same prompts as the clients ask
            t = time.perf_counter()
            service.ask(prompts[n % len(prompts)], args.tokens)
            direct.append(time.perf_counter() - t)
        direct_s = time.perf_counter() - started
        result["runs"].append({"edits": count + 1, "clients": 0, "how": "in-process, no server", "asks": len(direct),
                               "p50_ms": quantile(direct, 0.5) * 1e3, "p99_ms": quantile(direct, 0.99) * 1e3,
                               "asks_per_s": len(direct) / direct_s})
        print(json.dumps(result["runs"][-1]), flush=True)
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
                        response = http.post(url, json={  # noqa: B023 - url is the same for every run"prompt": prompts[n % len(prompts)],
                                                        "max_new_tokens": args.tokens})
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
            result["runs"].append({"edits": count + 1, "clients": clients, "how": "HTTP /v1/ask", "asks":
                                   len(latencies), "errors": len(errors), "p50_ms": quantile(latencies, 0.5) * 1e3,
                                   "p99_ms": quantile(latencies, 0.99) * 1e3, "asks_per_s": len(latencies) / wall})
            print(json.dumps(result["runs"][-1]), flush=True)
        server.should_exit = True
        thread.join(10)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
