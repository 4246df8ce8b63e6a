"""How an input finds its edit: keys, the table of keys, distances, thresholds."""

from .keys import HiddenStateKeys, SentenceEncoder, key_strategy
from .table import Explanation, KeyTable, Route

__all__ = ["Explanation", "HiddenStateKeys", "KeyTable", "Route", "SentenceEncoder", "key_strategy"]
