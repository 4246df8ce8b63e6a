"""Per-architecture defaults: which layers get a LoRA per edit, at what rank, and what kind of task the model does.

One table, so adding an architecture is one row. BERT, T5 and GPT-2 follow the SoLA paper's Table 6 (scaled to the
model's depth); LLaMA-like models use the layers we measured on SmolLM2-135M (30 layers: 15-17 `down_proj`, the middle
of the network, where rank-4 edits reach the loss bound in ~5 Adam steps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .errors import ConfigError

CAUSAL, SEQ2SEQ, CLASSIFICATION = "causal", "seq2seq", "classification"


@dataclass(frozen=True)
class LayerPlan:
    task: str
    template: str  # module name with {i} for the block index
    blocks: Callable[[int], list[int]]  # number of blocks -> indices of the edited blocks
    depth_attr: str  # config attribute holding the number of blocks
    rank: int = 4


def _middle_three(n: int) -> list[int]:
    start = max(0, n // 2)
    return [i for i in range(start, start + 3) if i < n]


def _three_quarters_two(n: int) -> list[int]:  # GPT2-XL: 36, 37 of 48
    start = (3 * n) // 4
    return [i for i in range(start, start + 2) if i < n]


def _last(k: int) -> Callable[[int], list[int]]:
    return lambda n: list(range(max(0, n - k), n))


_LLAMA_LIKE = LayerPlan(CAUSAL, "model.layers.{i}.mlp.down_proj", _middle_three, "num_hidden_layers")

ARCHITECTURES: dict[str, LayerPlan] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gpt2": LayerPlan(CAUSAL, "transformer.h.{i}.mlp.c_fc", _three_quarters_two, "n_layer"),
    "t5": LayerPlan(SEQ2SEQ, "encoder.block.{i}.layer.1.DenseReluDense.wo", _last(2), "num_layers"),
    "bert": LayerPlan(CLASSIFICATION, "bert.encoder.layer.{i}.output.dense", _last(3), "num_hidden_layers"),
}


def plan_for(model_type: str) -> LayerPlan:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ConfigError(
            f"no default edited layers for model_type={model_type!r} (known: {', '.join(sorted(ARCHITECTURES))}); "
            "pass EditConfig(layers=[...]) with the names of nn.Linear modules to edit"
        ) from None


def task_of(model_type: str) -> str:
    return ARCHITECTURES[model_type].task if model_type in ARCHITECTURES else CAUSAL


def default_layers(model: nn.Module) -> list[str]:
    plan = plan_for(model.config.model_type)
    depth = getattr(model.config, plan.depth_attr)
    return [plan.template.format(i=i) for i in plan.blocks(depth)]


def default_rank(model: nn.Module) -> int:
    model_type = model.config.model_type
    return ARCHITECTURES[model_type].rank if model_type in ARCHITECTURES else 4
