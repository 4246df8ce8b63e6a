"""LoRA-FT: one LoRA on the edited layers, trained on each edit in turn and applied to every input. The baseline of
catastrophic forgetting: nothing routes, every edit moves the same weights, and nothing can be undone exactly (each
edit's training starts where the previous one left the block), so `rollback` refuses."""

from __future__ import annotations

from contextlib import contextmanager

from .lora_blocks import LoraBlocksConfig, LoraBlocksEditor
from .registry import Method, TinySettings, register_method
from .snapshot import RollbackNotSupportedError

LoraFTConfig = LoraBlocksConfig


class LoraFTEditor(LoraBlocksEditor):
    method = "lora-ft"
    exact_rollback = False

    def _build(self):
        base = super()._build()
        self._grow(1)
        return base

    def _train(self, edit_id, encoded, targets, target):
        return self._train_block(edit_id, encoded, targets, 0, fresh=not self.edits())

    def _forget(self, edit_id):
        raise RollbackNotSupportedError(
            f"LoRA-FT cannot roll back {edit_id}: every edit trains the same LoRA, so its change cannot be separated "
            "from the others'. Start again from the base model and replay the edits you keep.")

    @contextmanager
    def _routed(self, prompts, batch):
        self._route_all(len(prompts), 0 if self.edits() else None)
        try:
            yield
        finally:
            self.decision.clear()

    def _state(self):
        return self._block_state()

    def _restore(self, tensors):
        self._restore_blocks(tensors)

    def _describe(self):
        return {"layers": self.config.layers, "rank": self.config.rank, "memory_bytes": self._memory()}


register_method(Method(
    name="lora-ft", editor=LoraFTEditor, config=LoraFTConfig,
    summary="LoRA fine-tuning: one shared LoRA trained on every edit in turn (no routing)",
    tiny=TinySettings(families=("llama", "gpt2"), config=dict(prompt_format="raw", learning_rate=0.05,
                                                               max_steps=200))))
