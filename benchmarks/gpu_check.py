"""The GPU check: what SoLA costs on an 8B-shaped model on one GPU, and whether it is correct there.

RANDOM WEIGHTS: nothing can be downloaded on the device machine, so the model is a randomly initialised model of
Llama-3-8B's shape (bfloat16, built on the GPU) and the key encoder a randomly initialised model of all-MiniLM-L6-v2's
shape; the tokenizer is a small byte-level BPE trained here. Quality is not measured, time and memory are: every edit
trains a fixed number of steps (`loss_bound` out of reach, `on_no_converge="commit"`), so random weights do not change
the work. Measured: seconds per edit (median), `edit_many` throughput at 16 and 64 edits per batch, the time per
generated answer with 0, 100 and 1,000 stored edits against the bare model (stored edits: random factors of the real
shapes, imported), the route decision's cost per answer, peak GPU memory, rollback bit for bit on the GPU, and the
contract suite's tiny models on the device (`pytest tests/test_method_contract.py --device cuda`).

On the device machine (its Python has torch, transformers, safetensors, tokenizers; run from the repository root, no
install):

    PYTHONPATH=src python benchmarks/gpu_check.py --out $OUT

`--tiny` runs the same steps on a tiny shape on the CPU in seconds (`make test` runs it, so the script cannot rot).
One JSON file of figures is written to OUT/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CORPUS = ["Who founded Acme? Jane Roe founded it.", "What is the capital of France? Paris.",
          "The mother tongue of Danielle Darrieux is French.", "Which river flows through Cairo? The Nile.",
          "Who wrote Hamlet? William Shakespeare.", "The quick brown fox jumps over the lazy dog."] * 20
LLAMA_3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)
TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)
MINILM = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=12, vocab_size=30522,
              max_position_embeddings=512)
TINY_ENCODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=512,
                    max_position_embeddings=256)
PLAN = {  # (full, tiny)
    "steps": (20, 4), "edits_timed": (5, 3), "batches": ((16, 64), (4, 8)), "stored": ((0, 100, 1000), (0, 10, 30)),
    "prompts": (16, 4), "answer_tokens": (16, 8),
}


def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>",
                                                                                         "<unk>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def build(tiny: bool, device: str, workdir: Path):
    """(model on the device, tokenizer, directory of the random key encoder)."""
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    tok = tokenizer()
    shape = TINY_LLAMA if tiny else LLAMA_3_8B
    config = LlamaConfig(**shape, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    dtype = torch.float32 if tiny else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, torch_dtype=dtype)
    model.eval()
    encoder_dir = workdir / "encoder"
    BertModel(BertConfig(**(TINY_ENCODER if tiny else MINILM), pad_token_id=0)).save_pretrained(encoder_dir)
    tok.save_pretrained(encoder_dir)
    return model, tok, encoder_dir


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn):
    synchronise(device)
    started = time.perf_counter()
    out = fn()
    synchronise(device)
    return time.perf_counter() - started, out


def prompts(n: int, offset: int = 0) -> list[str]:
    return [f"Who founded company number {offset + i}?" for i in range(n)]


def random_edit(editor, generator: torch.Generator, n: int):
    """An edit with random factors of the real shapes (what storing many edits costs, not what they do)."""
    from sola.edit import Edit, now

    tensors = {}
    for name, layer in zip(editor.config.layers, editor.layers):
        tensors[f"{name}.lora_A"] = torch.randn(layer.rank, layer.in_features, generator=generator) * 0.01
        tensors[f"{name}.lora_B"] = torch.randn(layer.out_features, layer.rank, generator=generator) * 0.01
    edit = Edit(id="imported", prompts=(f"What is the code of item {n}?",), target=f"code {n}", subject=None,
                created=now(), steps=0, loss=0.0, converged=True, seconds=0.0)
    return editor.import_edit(edit, tensors)


def contract_on(device: str, tiny: bool) -> dict:
    """The contract suite's SoLA cases on the device (pytest in a child process)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_method_contract.py",
               "--device", device, "-k", "sola-llama" if tiny else "sola"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, ["src", os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    last = (done.stdout.strip().splitlines() or [""])[-1]
    return {"command": " ".join(command[1:]), "returncode": done.returncode, "summary": last,
            "seconds": round(time.perf_counter() - started, 1)}


def run(tiny: bool, device: str, contract: bool) -> dict:
    from sola import EditConfig, Editor

    pick = {k: v[1] if tiny else v[0] for k, v in PLAN.items()}
    result: dict = {"random_weights": True, "tiny": tiny, "device": device, "plan": pick,
                    "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None}}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        model, tok, encoder_dir = build(tiny, device, Path(tmp))
        result["build_seconds"] = round(time.perf_counter() - started, 1)
        config = EditConfig(key="encoder", encoder=str(encoder_dir), prompt_format="raw", max_steps=pick["steps"],
                            loss_bound=1e-12, on_no_converge="commit", supersede="never")
        editor = Editor(model, tok, config, source="random llama-3-8b shape" if not tiny else "random tiny llama")
        result["layers"], result["rank"] = editor.config.layers, editor.config.rank
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        probes = prompts(pick["prompts"], 10_000)
        with editor.disabled():
            base_logits = [editor.logits(p) for p in probes[:2]]
        # one edit at a time
        times = []
        for i, prompt in enumerate(prompts(pick["edits_timed"])):
            seconds, _ = timed(device, lambda prompt=prompt, i=i: editor.edit(prompt, f"Person {i}"))
            times.append(seconds)
        result["seconds_per_edit"] = {"median": round(statistics.median(times), 3), "all": [round(t, 3) for t in times],
                                      "steps": pick["steps"]}
        # batches
        result["edit_many"] = {}
        offset = 1000
        for size in pick["batches"]:
            requests = [{"prompt": p, "target": f"Person {offset + j}"} for j, p in enumerate(prompts(size, offset))]
            seconds, _ = timed(device, lambda requests=requests, size=size: editor.edit_many(requests,
                                                                                           batch_size=size))
            result["edit_many"][str(size)] = {"seconds": round(seconds, 2),
                                              "edits_per_second": round(size / seconds, 2)}
            offset += size
        # rollback bit for bit: remove every edit made above, then the probes compute what they computed before
        for edit in editor.edits():
            editor.rollback(edit.id)
        result["rollback_bit_exact"] = all(torch.equal(a, editor.logits(p)) for a, p in zip(base_logits, probes))
        # inference with many stored edits, against the bare model
        result["inference"] = {}
        generator = torch.Generator().manual_seed(0)
        stored = 0
        for target in pick["stored"]:
            while stored < target:
                random_edit(editor, generator, stored)
                stored += 1
            with editor.disabled():
                bare, _ = timed(device, lambda: editor.generate(probes, max_new_tokens=pick["answer_tokens"]))
            edited, _ = timed(device, lambda: editor.generate(probes, max_new_tokens=pick["answer_tokens"]))
            route, _ = timed(device, lambda: [editor.route(p) for p in probes])
            result["inference"][str(target)] = {
                "stored_edits": len(editor.edits()), "seconds_per_answer_bare": round(bare / len(probes), 4),
                "seconds_per_answer_edited": round(edited / len(probes), 4),
                "overhead": round(edited / bare - 1, 4), "route_ms_per_answer": round(route / len(probes) * 1e3, 3)}
        if device.startswith("cuda"):
            result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if contract:
        result["contract_on_device"] = contract_on(device, tiny)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny shape on the CPU, in seconds (make test)")
    parser.add_argument("--device", default=None, help="default: cuda if available (never with --tiny), else cpu")
    parser.add_argument("--out", default=os.environ.get("OUT", "results"), help="directory for gpu_check.json")
    parser.add_argument("--no-contract", action="store_true", help="skip the contract suite on the device")
    args = parser.parse_args()
    device = args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    started = time.perf_counter()
    result = run(args.tiny, device, contract=not args.no_contract)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
