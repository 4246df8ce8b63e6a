"""Editing methods behind one small protocol, so the benchmark runner measures them all the same way.

SoLA is `sola.Editor`; ELDER and the baselines (GRACE, MELO, LoRA-FT) are `SnapshotEditor`s with the same public surface
(`from_pretrained`, `edit`, `edit_many`, `rollback` where the method allows it, `generate`, `score`, `route`, `save`,
`load`)."""

from .base import EditingMethod, MethodRoute
from .elder import ElderConfig, ElderEditor, ElderOnlineConfig, ElderOnlineEditor
from .grace import GraceConfig, GraceEditor
from .lora_ft import LoraFTConfig, LoraFTEditor
from .melo import MeloConfig, MeloEditor
from .registry import Method, SnapshotMethod, TinySettings, method, register_method, registered
from .snapshot import RollbackNotSupportedError, SnapshotEditor
from .sola import SolaMethod

METHODS = tuple(registered())  # every registered method's name
BASELINES = {name: m.editor for name, m in registered().items() if issubclass(m.editor, SnapshotEditor)}

__all__ = ["BASELINES", "METHODS", "EditingMethod", "ElderConfig", "ElderEditor", "ElderOnlineConfig",
           "ElderOnlineEditor", "GraceConfig", "GraceEditor", "LoraFTConfig", "LoraFTEditor",
           "MeloConfig", "MeloEditor", "Method", "MethodRoute", "RollbackNotSupportedError", "SnapshotEditor",
           "SnapshotMethod", "SolaMethod", "TinySettings", "method", "register_method", "registered"]
