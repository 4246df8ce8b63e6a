"""`elder-online`: ELDER for one-edit-at-a-time streams (ours; `ElderOnlineConfig` says how and why)."""

from __future__ import annotations

from ..registry import Method, TinySettings, register_method
from .config import ElderOnlineConfig
from .editor import ElderEditor


class ElderOnlineEditor(ElderEditor):
    method = "elder-online"
    config_class = ElderOnlineConfig


register_method(Method(
    name="elder-online", editor=ElderOnlineEditor, config=ElderOnlineConfig,
    summary="ELDER for one edit at a time (ours): fixed schedule with replay, SoLA's subject gate as deferral",
    tiny=TinySettings(families=("llama", "gpt2"), config=dict(epsilon=1, prompt_format="raw", fixed_steps=60,
                                                               fixed_learning_rate=0.05, fixed_lr_step=30))))
