"""What a model does with a prompt and a target: continue it (causal LM), answer it (seq2seq) or classify it.

Each task builds padded batches, scores a target (teacher-forced loss and exact match) and answers a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import StoppingCriteria, StoppingCriteriaList

from .architectures import CAUSAL, CLASSIFICATION, SEQ2SEQ
from .errors import InvalidEditError
from .prompts import EncodedPrompt, PromptFormat, check_text


@dataclass(frozen=True)
class TargetScore:
    """A target read teacher-forced: its tokens, the model's argmax at each of them, and their log-probabilities."""

    tokens: list[int]
    predicted: list[int]
    logprobs: list[float]

    @property
    def accuracy(self) -> float:
        """Share of target tokens the model predicts (the field's teacher-forced token accuracy)."""
        return sum(p == t for p, t in zip(self.predicted, self.tokens)) / len(self.tokens)

    @property
    def exact(self) -> bool:
        return self.predicted == self.tokens

    @property
    def nll(self) -> float:
        """Mean negative log-likelihood per target token (perplexity is its exp)."""
        return -sum(self.logprobs) / len(self.logprobs)


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # keyword arguments of the model's forward
    mask: torch.Tensor  # (B, T) bool: the prompt's own tokens in `inputs["input_ids"]` (routing reads these)
    labels: torch.Tensor | None  # task specific targets, -100 where ignored


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


class _LineEnded(StoppingCriteria):
    """Per row: the answer has begun and a line break followed it. Leading line breaks do not count: a base model
    often starts a new line after a question before answering."""

    def __init__(self, tokenizer, start: int) -> None:
        self.tokenizer, self.start = tokenizer, start

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
        return torch.tensor([bool(t.strip()) and "\n" in t.lstrip() for t in texts], device=input_ids.device)


class Task:
    kind: str

    def __init__(self, model, tokenizer, prompt_format: PromptFormat) -> None:
        self.model, self.tokenizer, self.format = model, tokenizer, prompt_format
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.max_length = _context_length(model, tokenizer)

    def _placed(self, batch: Batch) -> Batch:
        """The batch on the model's device (a model on a GPU, or its first shard with a device_map)."""
        device = getattr(self.model, "device", None)
        if device is None or device.type == "cpu":
            return batch
        inputs = {k: v.to(device) for k, v in batch.inputs.items()}
        labels = batch.labels.to(device) if batch.labels is not None else None
        return Batch(inputs, batch.mask.to(device), labels)

    def encode_target(self, prompt: str, target: str) -> list[int]:
        raise NotImplementedError

    def batch(self, prompts: list[EncodedPrompt], targets: list[list[int]] | None) -> Batch:
        raise NotImplementedError

    def target_forward(self, batch: Batch) -> torch.Tensor:
        """The model's logits for `batch`, as `score`/`target_scores` read them. Tasks may compute only the positions
        that predict target tokens (the rest of a causal LM's vocabulary projection is wasted work)."""
        return self.model(**batch.inputs).logits

    def score(self, batch: Batch, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mean cross-entropy per row (B,), target reproduced exactly per row (B,) bool)"""
        raise NotImplementedError

    def target_logits(self, batch: Batch, logits: torch.Tensor) -> list[torch.Tensor]:
        """The logits that predict each target token, per row: a list of (len(target), V)."""
        raise NotImplementedError

    def target_scores(self, batch: Batch, logits: torch.Tensor) -> list[TargetScore]:
        wanted = [row[row != -100] for row in batch.labels.view(len(logits), -1)]
        scores = []
        for predicting, target in zip(self.target_logits(batch, logits), wanted):
            logprobs = torch.log_softmax(predicting.float(), dim=-1).gather(1, target.view(-1, 1)).squeeze(1)
            scores.append(TargetScore(target.tolist(), predicting.argmax(-1).tolist(), logprobs.tolist()))
        return scores

    def generation_batch(self, prompts: list[EncodedPrompt]) -> Batch:
        """Prompts padded for generating several answers at once (decoders pad on the left)."""
        return self.batch(prompts, None)

    @torch.no_grad()
    def answer_batch(self, batch: Batch, max_new_tokens: int, stop_at_newline: bool) -> list[str]:
        raise NotImplementedError

    def _generate(self, batch: Batch, max_new_tokens: int, stop_at_newline: bool) -> torch.Tensor:
        extra = {}
        if stop_at_newline:
            extra["stopping_criteria"] = StoppingCriteriaList([_LineEnded(self.tokenizer, self._prompt_width(batch))])
        return self.model.generate(
            **batch.inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.pad_id, **extra,
        )

    def _prompt_width(self, batch: Batch) -> int:
        """Where generated tokens start in `generate`'s output."""
        return batch.inputs["input_ids"].shape[1]

    def _decode(self, ids: torch.Tensor, stop_at_newline: bool) -> str:
        return self.cut_answer(self.tokenizer.decode(ids, skip_special_tokens=True), stop_at_newline)

    @staticmethod
    def cut_answer(text: str, stop_at_newline: bool) -> str:
        """Generated text as an answer: with `stop_at_newline`, its first non-empty line; stripped (an engine's text is
        cut the same way, `sola.serve.engine`)."""
        if stop_at_newline:
            text = text.lstrip("\n").split("\n", 1)[0]
        return text.strip()

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

    def target_forward(self, batch):
        """The logits that predict the target tokens and no others: (B, longest target, V), row i's target tokens
        predicted by its first len(target_i) positions. The output layer (often the largest matrix of a small model)
        reads only those positions' hidden states, gathered per row on their way in; no KV cache."""
        positions = _predicting_positions(batch.labels)
        head, gathered = self.model.get_output_embeddings(), []

        def gather(_module, args):
            gathered.append(True)
            hidden = args[0]
            return (hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])),) + args[1:]

        handle = head.register_forward_pre_hook(gather) if head is not None else None
        try:
            logits = self.model(**batch.inputs, use_cache=False).logits
        finally:
            if handle is not None:
                handle.remove()
        if not gathered:  # a model that does not call its output layer as a module: gather from every position
            logits = logits.gather(1, positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        return logits

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
        return self._placed(Batch({"input_ids": input_ids, "attention_mask": attention}, mask, labels))

    def generation_batch(self, prompts):
        width = max(len(p.ids) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p.ids)) + p.ids for p in prompts])
        attention = torch.tensor([[0] * (width - len(p.ids)) + [1] * len(p.ids) for p in prompts])
        mask = torch.tensor([[False] * (width - len(p.ids)) + list(p.content) for p in prompts])
        return self._placed(Batch({"input_ids": input_ids, "attention_mask": attention}, mask, None))

    @torch.no_grad()
    def answer_batch(self, batch, max_new_tokens, stop_at_newline):
        output = self._generate(batch, max_new_tokens, stop_at_newline)
        width = batch.inputs["input_ids"].shape[1]
        return [self._decode(row[width:], stop_at_newline) for row in output]

    def target_logits(self, batch, logits):
        """`logits` as `target_forward` gives them: row i's first len(target_i) positions predict its target."""
        return [row_logits[:int(count)] for row_logits, count in zip(logits, (batch.labels != -100).sum(1))]

    def score(self, batch, logits):
        wanted = [row[row != -100] for row in batch.labels]
        return self._sequence_score(self.target_logits(batch, logits), wanted)


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
        return self._placed(Batch(inputs, mask, labels))

    def target_logits(self, batch, logits):
        return [row_logits[row_labels != -100] for row_logits, row_labels in zip(logits, batch.labels)]

    def score(self, batch, logits):
        wanted = [row[row != -100] for row in batch.labels]
        return self._sequence_score(self.target_logits(batch, logits), wanted)

    def _prompt_width(self, batch):
        return 0  # the decoder's output holds only the answer (after its start token)

    @torch.no_grad()
    def answer_batch(self, batch, max_new_tokens, stop_at_newline):
        output = self._generate(batch, max_new_tokens, stop_at_newline)
        return [self._decode(row, stop_at_newline) for row in output]


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
        return self._placed(Batch({"input_ids": input_ids, "attention_mask": attention}, mask, labels))

    def target_logits(self, batch, logits):
        return [row.unsqueeze(0) for row in logits]

    def score(self, batch, logits):
        return self._sequence_score(self.target_logits(batch, logits), [label.view(1) for label in batch.labels])

    @torch.no_grad()
    def answer_batch(self, batch, max_new_tokens, stop_at_newline):
        logits = self.model(**batch.inputs).logits
        return [str(self.model.config.id2label[int(i)]) for i in logits.argmax(-1)]


TASKS = {task.kind: task for task in (CausalTask, Seq2SeqTask, ClassificationTask)}


def _context_length(model, tokenizer) -> int | None:
    config = model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 1_000_000 else None


def _predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels (-100 off the target) -> (B, longest target) the positions whose logits predict each target token
    (the one before it), a shorter target's row padded with its last position (a row without one: position 0)."""
    counts = (labels != -100).sum(1)
    width = int(counts.max())
    first = (labels != -100).int().argmax(1)  # a causal row's target is contiguous, after its prompt
    steps = torch.arange(width, device=labels.device)
    return (first.unsqueeze(1) - 1 + torch.minimum(steps.unsqueeze(0), (counts - 1).unsqueeze(1))).clamp_min(0)
