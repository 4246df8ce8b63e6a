"""The master decision: which edit each row of a batch uses, made once per input and held until the input ends."""

from __future__ import annotations

from collections.abc import Callable

import torch


class Decision:
    """Shared by every `RoutedLoraLayer` of one model.

    `slots` is a LongTensor (B,) of LoRA slots, one per batch row, -1 meaning "base model"; None means no edit is
    active for anyone (the model computes exactly what the unedited model computes).

    For keys read inside the model, the editor arms the decision with a content mask (B, T) and a router; the first
    forward pass that reaches the key module computes the queries from the prompt tokens under the mask, routes, and
    fixes `slots`. Later forward passes of the same input (generated tokens, which reuse the KV cache) find the decision
    already made and keep it: the route is never recomputed per generated token.
    """

    def __init__(self) -> None:
        self.slots: torch.Tensor | None = None
        self.training = False  # slots index the trainable factors of the edit being trained
        self._pending: tuple[torch.Tensor, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] | None = None

    def arm(self, mask: torch.Tensor, router: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        """Route at the next pass through the key module: router(hidden (B,T,d), mask (B,T)) -> slots (B,)."""
        self.slots, self._pending = None, (mask, router)

    def fix(self, slots: torch.Tensor, *, training: bool = False) -> None:
        """Set the decision directly (keys computed outside the model, or an edit being trained)."""
        self.slots, self.training, self._pending = _none_if_unrouted(slots), training, None

    def clear(self) -> None:
        self.slots, self.training, self._pending = None, False, None

    def decide_from(self, hidden: torch.Tensor) -> None:
        """Called at the key module with its input hidden states (B, T, d); a no-op unless armed."""
        if self._pending is None:
            return
        mask, router = self._pending
        if hidden.shape[:2] != mask.shape:
            raise RuntimeError(
                f"routing mask {tuple(mask.shape)} does not match the key module input {tuple(hidden.shape[:2])}; "
                "the key module must see the whole prompt in its first forward pass"
            )
        self._pending = None
        self.slots = _none_if_unrouted(router(hidden, mask))


def _none_if_unrouted(slots: torch.Tensor) -> torch.Tensor | None:
    """No row routed: the layers need not look at the slots at all for the rest of this input."""
    return None if bool((slots < 0).all()) else slots
