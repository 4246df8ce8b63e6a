"""Serve a store's edits with a multi-LoRA engine: SoLA routes each prompt once, the engine applies that adapter.

    python examples/multi_lora_routing.py --store STORE --out ADAPTERS "Who founded Acme?" "What is 2+2?"
    python examples/multi_lora_routing.py --store STORE --out ADAPTERS --dry-run PROMPT ...  (no engine: the plan)

1. `sola.adapters.export_all` writes every answering edit as a PEFT LoRA adapter (ADAPTERS/adapters/<edit id>/).
2. `Editor.route_many` names, per prompt, the edit to apply, or none (the base model answers).
3. The engine gets one request per prompt, with that adapter (vLLM: `LoRARequest(name, int_id, path)`).

Steps 1 and 2 are what tests/test_adapters.py runs (with --dry-run). Step 3, the engine call, is not run in our tests:
vLLM and SGLang need a GPU, which the machine the tests run on does not have. It follows vLLM's documented
`LLM(enable_lora=True, ...)` / `generate(..., lora_request=...)` API; see docs/deployment.md for the settings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sola import Editor
from sola.adapters import export_all


def plan(store: str, out: str, prompts: list[str], model: str | None = None) -> list[dict]:
    """Export the adapters (once: an existing OUT/router.json is reused) and route every prompt; -> one request per
    prompt: {"prompt", "adapter" (an edit id or None), "path" (its adapter directory or None), "lora_int_id"}."""
    editor = Editor.load(store, model)
    router_file = Path(out) / "router.json"
    router = json.loads(router_file.read_text()) if router_file.is_file() else export_all(editor, out)
    ids = {name: n + 1 for n, name in enumerate(router["adapters"])}  # vLLM wants a positive int id per adapter
    requests = []
    for prompt, route in zip(prompts, editor.route_many(prompts)):
        adapter = route.edit_id if route is not None else None
        requests.append({"prompt": prompt, "adapter": adapter,
                         "path": str(Path(out) / "adapters" / adapter) if adapter else None,
                         "lora_int_id": ids.get(adapter)})
    return requests


def serve_with_vllm(requests: list[dict], base_model: str, rank: int, max_new_tokens: int = 32) -> list[str]:
    """The engine call (not run in our tests: it needs vLLM and a GPU)."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    llm = LLM(model=base_model, enable_lora=True, max_loras=8, max_lora_rank=max(8, rank), max_cpu_loras=1024)
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop=["\n"])
    answers = []
    for request in requests:  # one adapter per request; vLLM batches requests with different adapters together
        lora = LoRARequest(request["adapter"], request["lora_int_id"], request["path"]) if request["adapter"] else None
        answers.append(llm.generate([request["prompt"]], params, lora_request=lora)[0].outputs[0].text)
    return answers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prompts", nargs="+")
    parser.add_argument("--store", required=True)
    parser.add_argument("--out", required=True, help="where the adapters and the routing table are exported")
    parser.add_argument("--model", help="the store's base model, if it is not where the store says")
    parser.add_argument("--dry-run", action="store_true", help="print the requests instead of calling the engine")
    args = parser.parse_args(argv)
    requests = plan(args.store, args.out, args.prompts, args.model)
    if args.dry_run:
        print("\n".join(json.dumps(r) for r in requests))
        return
    router = json.loads((Path(args.out) / "router.json").read_text())
    for request, answer in zip(requests, serve_with_vllm(requests, router["base_model_name_or_path"], router["rank"])):
        print(f"{request['adapter'] or 'base'}\t{request['prompt']}\t{answer}")


if __name__ == "__main__":
    main()
