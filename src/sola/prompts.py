"""Prompt formats: how a user's prompt becomes token ids, and which of those tokens are the prompt itself."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError, InvalidEditError


@dataclass(frozen=True)
class EncodedPrompt:
    text: str  # the user's prompt, as given
    ids: list[int]  # the model input, formatted
    content: list[bool]  # True on tokens that overlap the user's text (routing reads only these)


def check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidEditError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidEditError(f"{what} is empty; give the text of the {what}")
    return value


class PromptFormat:
    """"raw": the prompt text as is (benchmarks). "chat": a user turn in the tokenizer's chat template, followed by the
    assistant header (instruct models answer well only this way)."""

    def __init__(self, tokenizer, kind: str) -> None:
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if kind == "auto":
            kind = "chat" if has_template else "raw"
        if kind == "chat" and not has_template:
            raise ConfigError("prompt_format='chat' needs a tokenizer with a chat template; use prompt_format='raw'")
        self.tokenizer, self.kind = tokenizer, kind

    def encode(self, prompt: str) -> EncodedPrompt:
        check_text(prompt, "prompt")
        if self.kind == "chat":
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            start = text.rfind(prompt)
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        else:
            start = 0
            encoded = self.tokenizer(prompt, return_offsets_mapping=True)
        end = start + len(prompt)
        content = [s < end and e > start and e > s for s, e in encoded["offset_mapping"]]
        if not any(content):
            raise InvalidEditError(f"prompt {prompt!r} produced no tokens; give a prompt with some text")
        return EncodedPrompt(prompt, list(encoded["input_ids"]), content)

    def answer_prefix(self, prompt: str) -> str:
        """What separates a prompt from its answer: a space in raw text (unless the prompt ends in whitespace)."""
        if self.kind == "chat" or prompt[-1:].isspace():
            return ""
        return " "
