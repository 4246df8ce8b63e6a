"""Asking an edited model: greedy answers and teacher-forced scores, each input routed once from its prompt."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from .errors import InvalidEditError
from .prompts import EncodedPrompt, check_text
from .tasks import Batch, TargetScore, Task


class Asking:
    """`generate`, `score` and `logits` for any editor that provides `task`, `encode(prompt)` and
    `_routed(prompts, batch)` (a context inside which the model computes the routed outputs for those prompts)."""

    task: Task

    def encode(self, prompt: str) -> EncodedPrompt:
        raise NotImplementedError

    def _routed(self, prompts: list[EncodedPrompt], batch: Batch) -> AbstractContextManager:
        raise NotImplementedError

    def _before_asking(self) -> None:
        """Called before every question (an editor on a shared store reads others' commits here)."""

    # -- asking ------------------------------------------------------------------------------------------------------
    def generate(self, prompt: str | list[str], max_new_tokens: int = 32, *, batch_size: int = 1,
                 stop_at_newline: bool = False) -> str | list[str]:
        """Greedy answer(s). The route is chosen once from the prompt and held for every generated token.

        `batch_size` > 1 answers several prompts per forward pass (much faster for evaluation; padding may change the
        last bits of the numbers, so a near-tie can resolve differently than with batch_size=1). `stop_at_newline`
        ends an answer at its first line break (the natural stop for short factual answers)."""
        self._before_asking()
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        encoded = [self.encode(text) for text in prompts]
        answers = []
        for start in range(0, len(encoded), max(1, batch_size)):
            chunk = encoded[start:start + max(1, batch_size)]
            batch = self.task.generation_batch(chunk)
            with self._routed(chunk, batch):
                answers += self.task.answer_batch(batch, max_new_tokens, stop_at_newline)
        return answers[0] if isinstance(prompt, str) else answers

    @torch.no_grad()
    def score(self, prompts: list[str], targets: list[str], *, batch_size: int = 16) -> list[TargetScore]:
        """Teacher-forced reading of each target after its prompt (routed from the prompt alone): the target's
        tokens, the model's argmax at each, and their log-probabilities. Metrics like token accuracy and perplexity
        are properties of the returned `TargetScore`s."""
        if len(prompts) != len(targets):
            raise InvalidEditError(f"score needs one target per prompt; got {len(prompts)} prompts, {len(targets)} "
                                   "targets")
        self._before_asking()
        encoded = [self.encode(p) for p in prompts]
        wanted = [self.task.encode_target(p, check_text(t, "target").strip()) for p, t in zip(prompts, targets)]
        scores = []
        for start in range(0, len(encoded), max(1, batch_size)):
            chunk, chunk_targets = encoded[start:start + batch_size], wanted[start:start + batch_size]
            batch = self.task.batch(chunk, chunk_targets)
            with self._routed(chunk, batch):
                scores += self.task.target_scores(batch, self.task.target_forward(batch))
        return scores

    @torch.no_grad()
    def logits(self, prompt: str, target: str | None = None) -> torch.Tensor:
        """The model's logits on the prompt (and, teacher-forced, the target), routed from the prompt alone.

        Causal LMs: (T, V) over the whole sequence. Seq2seq: (len(target), V) decoder logits (target required).
        Classifiers: (num_labels,)."""
        self._before_asking()
        encoded = self.encode(prompt)
        targets = [self.task.encode_target(prompt, target)] if target is not None else None
        if targets is None and self.task.kind == "seq2seq":
            raise InvalidEditError("a seq2seq model needs a target to compute decoder logits")
        batch = self.task.batch([encoded], targets)
        with self._routed([encoded], batch):
            return self.model(**batch.inputs).logits[0]
