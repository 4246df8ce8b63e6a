"""Putting modules into a model and reading what flows into one: the two things every editing method does to a model.

`modules(model, names)` finds the modules to edit (one error, with names that do exist, when one is missing);
`inject(model, name, wrap)` replaces a module by its wrapper (PEFT's "wrap, don't patch": the wrapper keeps the
original as `base_layer`); `Attachments` does that and registers forward hooks, keeping a way back for each, so that
an editor can be taken off its model (`close()`); `capture(model, module, run, read)` runs a forward pass only as far
as `module`, hands its input (and output) to `read`, and stops the pass there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError


def modules(model: nn.Module, names: list[str], what: str = "layers") -> dict[str, nn.Module]:
    """The modules of `model` named `names`, in order; `ConfigError` naming the missing ones and what names look
    like."""
    found = dict(model.named_modules())
    missing = [name for name in names if name not in found]
    if missing:
        linear = [n for n, m in found.items() if isinstance(m, nn.Linear)][:8]
        raise ConfigError(f"{what} {missing} are not modules of this model; names look like {linear}")
    return {name: found[name] for name in names}


def inject(model: nn.Module, name: str, wrap: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Replace the module `name` by `wrap(module)`; -> the wrapper."""
    module = modules(model, [name])[name]
    parent, _, child = name.rpartition(".")
    wrapper = wrap(module)
    setattr(model.get_submodule(parent) if parent else model, child, wrapper)
    return wrapper


class Attachments:
    """Everything an editor puts on a model: wrappers in place of its modules and forward hooks on them, each with
    its way back, and the model's own train/eval modes and `requires_grad` flags, taken when it was handed over.
    `remove()` undoes it all, last first: the model is then the one that was handed over, module for module."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._undo: list[Callable[[], None]] = []
        modes = [(module, module.training) for module in model.modules()]
        flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]

        def restore_modes() -> None:
            for module, training in modes:
                module.training = training
            for parameter, flag in flags:
                parameter.requires_grad_(flag)

        self._undo.append(restore_modes)

    def inject(self, name: str, wrap: Callable[[nn.Module], nn.Module]) -> nn.Module:
        """`inject` that `remove()` undoes (the original module goes back in its place)."""
        module = modules(self.model, [name])[name]
        wrapper = inject(self.model, name, wrap)
        parent, _, child = name.rpartition(".")
        owner = self.model.get_submodule(parent) if parent else self.model
        self._undo.append(lambda: setattr(owner, child, module))
        return wrapper

    def pre_hook(self, module: nn.Module, hook: Callable, *, with_kwargs: bool = False) -> None:
        """`module.register_forward_pre_hook(hook)`, removed by `remove()`."""
        self._undo.append(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs).remove)

    @property
    def attached(self) -> bool:
        return bool(self._undo)

    def remove(self) -> None:
        """Take everything off the model, last first (a second call does nothing)."""
        while self._undo:
            self._undo.pop()()


class _Captured(Exception):
    def __init__(self, value) -> None:
        self.value = value


def capture(module: nn.Module, run: Callable[[], object], read: Callable[..., object], *, output: bool = False):
    """Run `run()` (a forward pass, without gradients) until it reaches `module`, and return `read(hidden)` of the
    module's input (`read(hidden, out)` with `output=True`, after the module ran); the pass stops there."""

    def before(_module, args, kwargs):
        raise _Captured(read(args[0] if args else kwargs.get("hidden_states")))

    def after(_module, args, kwargs, out):
        raise _Captured(read(args[0] if args else kwargs.get("hidden_states"), out))

    handle = (module.register_forward_hook(after, with_kwargs=True) if output
              else module.register_forward_pre_hook(before, with_kwargs=True))
    try:
        with torch.no_grad():
            run()
    except _Captured as captured:
        return captured.value
    finally:
        handle.remove()
    raise RuntimeError(f"the forward pass never reached {type(module).__name__}")
