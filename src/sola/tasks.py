"""What a model does with a prompt and a target: continue it (causal LM), answer it (seq2seq) or classify it.

Each task builds padded batches, scores a target (teacher-forced loss and exact match) and answers a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .architectures import CAUSAL, CLASSIFICATION, SEQ2SEQ
from .errors import InvalidEditError
from .prompts import EncodedPrompt, PromptFormat, check_text


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # keyword arguments of the model's forward
    mask: torch.Tensor  # (B, T) bool: the prompt's own tokens in `inputs["input_ids"]` (routing reads these)
    labels: torch.Tensor | None  # task specific targets, -100 where ignored


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


class Task:
    kind: str

    def __init__(self, model, tokenizer, prompt_format: PromptFormat) -> None:
        self.model, self.tokenizer, self.format = model, tokenizer, prompt_format
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.max_length = _context_length(model, tokenizer)

    def encode_target(self, prompt: str, target: str) -> list[int]:
        raise NotImplementedError

    def batch(self, prompts: list[EncodedPrompt], targets: list[list[int]] | None) -> Batch:
        raise NotImplementedError

    def score(self, batch: Batch, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mean cross-entropy per row (B,), target reproduced exactly per row (B,) bool)"""
        raise NotImplementedError

    def target_logits(self, batch: Batch, logits: torch.Tensor) -> list[torch.Tensor]:
        """The logits that predict each target token, per row: a list of (len(target), V)."""
        raise NotImplementedError

    @torch.no_grad()
    def answer(self, prompt: EncodedPrompt, max_new_tokens: int) -> str:
        raise NotImplementedError

    def check_length(self, prompt: EncodedPrompt, target: list[int] | None = None) -> None:
        length = len(prompt.ids) + (len(target) if target else 0)
        if self.max_length is not None and length > self.max_length:
            raise InvalidEditError(
                f"prompt{' and target' if target else ''} take {length} tokens but the model reads at most "
                f"{self.max_length}; shorten the prompt"
            )

    def _sequence_score(self, predicting: list[torch.Tensor], wanted: list[torch.Tensor]):
        losses, exact = [], []
        for logits, target in zip(predicting, wanted):
            losses.append(F.cross_entropy(logits.float(), target))
            exact.append(bool((logits.argmax(-1) == target).all()))
        return torch.stack(losses), torch.tensor(exact)


class CausalTask(Task):
    """Decoder-only LM: the target (then the end-of-sequence token) continues the prompt."""

    kind = CAUSAL

    def encode_target(self, prompt: str, target: str) -> list[int]:
        check_text(target, "target")
        ids = self.tokenizer(self.format.answer_prefix(prompt) + target, add_special_tokens=False)["input_ids"]
        return list(ids) + [self.tokenizer.eos_token_id]

    def batch(self, prompts, targets):
        targets = targets or [[] for _ in prompts]
        rows = [p.ids + t for p, t in zip(prompts, targets)]
        input_ids = _pad(rows, self.pad_id)
        attention = _pad([[1] * len(r) for r in rows], 0)
        mask = _pad([[int(c) for c in p.content] for p in prompts], 0).bool()
        mask = F.pad(mask, (0, input_ids.shape[1] - mask.shape[1]))
        labels = _pad([[-100] * len(p.ids) + t for p, t in zip(prompts, targets)], -100)
        return Batch({"input_ids": input_ids, "attention_mask": attention}, mask, labels)

    def target_logits(self, batch, logits):
        out = []
        for row_logits, row_labels in zip(logits, batch.labels):
            positions = (row_labels != -100).nonzero().squeeze(1)
            out.append(row_logits[positions - 1])  # logits at t predict token t + 1
        return out

    def score(self, batch, logits):
        wanted = [row[row != -100] for row in batch.labels]
        return self._sequence_score(self.target_logits(batch, logits), wanted)

    @torch.no_grad()
    def answer(self, prompt, max_new_tokens):
        input_ids = torch.tensor([prompt.ids])
        output = self.model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
            do_sample=False, eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.pad_id,
        )
        return self.tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True).strip()


class Seq2SeqTask(Task):
    """Encoder-decoder (T5): the prompt goes to the encoder, the target (then EOS) is the decoder's output."""

    kind = SEQ2SEQ

    def encode_target(self, prompt: str, target: str) -> list[int]:
        check_text(target, "target")
        return list(self.tokenizer(target, add_special_tokens=False)["input_ids"]) + [self.tokenizer.eos_token_id]

    def check_length(self, prompt, target=None):
        super().check_length(prompt)  # the target goes to the decoder, not the encoder

    def batch(self, prompts, targets):
        input_ids = _pad([p.ids for p in prompts], self.pad_id)
        attention = _pad([[1] * len(p.ids) for p in prompts], 0)
        mask = _pad([[int(c) for c in p.content] for p in prompts], 0).bool()
        labels = _pad(targets, -100) if targets else None
        inputs = {"input_ids": input_ids, "attention_mask": attention}
        if labels is not None:
            inputs["labels"] = labels
        return Batch(inputs, mask, labels)

    def target_logits(self, batch, logits):
        return [row_logits[row_labels != -100] for row_logits, row_labels in zip(logits, batch.labels)]

    def score(self, batch, logits):
        wanted = [row[row != -100] for row in batch.labels]
        return self._sequence_score(self.target_logits(batch, logits), wanted)

    @torch.no_grad()
    def answer(self, prompt, max_new_tokens):
        input_ids = torch.tensor([prompt.ids])
        output = self.model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
            do_sample=False, eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.pad_id,
        )
        return self.tokenizer.decode(output[0], skip_special_tokens=True).strip()


class ClassificationTask(Task):
    """Sequence classifier (BERT): the target is a label name from `config.id2label` (or its index)."""

    kind = CLASSIFICATION

    def labels(self) -> dict[str, int]:
        return {str(name): int(index) for index, name in self.model.config.id2label.items()}

    def encode_target(self, prompt: str, target: str) -> list[int]:
        check_text(target, "target")
        labels = self.labels()
        if target in labels:
            return [labels[target]]
        if target.isdigit() and int(target) in labels.values():
            return [int(target)]
        raise InvalidEditError(f"target {target!r} is not a label of this classifier; use one of {sorted(labels)}")

    def batch(self, prompts, targets):
        input_ids = _pad([p.ids for p in prompts], self.pad_id)
        attention = _pad([[1] * len(p.ids) for p in prompts], 0)
        mask = _pad([[int(c) for c in p.content] for p in prompts], 0).bool()
        labels = torch.tensor([t[0] for t in targets]) if targets else None
        return Batch({"input_ids": input_ids, "attention_mask": attention}, mask, labels)

    def target_logits(self, batch, logits):
        return [row.unsqueeze(0) for row in logits]

    def score(self, batch, logits):
        return self._sequence_score(self.target_logits(batch, logits), [label.view(1) for label in batch.labels])

    @torch.no_grad()
    def answer(self, prompt, max_new_tokens):
        input_ids = torch.tensor([prompt.ids])
        logits = self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
        return str(self.model.config.id2label[int(logits[0].argmax())])


TASKS = {task.kind: task for task in (CausalTask, Seq2SeqTask, ClassificationTask)}


def _context_length(model, tokenizer) -> int | None:
    config = model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 1_000_000 else None
