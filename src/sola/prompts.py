"""Prompt formats: how a user's prompt becomes token ids, and which of those tokens are the prompt itself."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError, InvalidEditError


@dataclass(frozen=True)
class EncodedPrompt:
    text: str  # the user's prompt, as given
    ids: list[int]  # the model input, formatted
    content: list[bool]  # True on tokens that overlap the user's text (routing reads only these)


# The longest prompt and target an edit takes, in tokens of the model's tokenizer (a prompt's own text, without the
# chat template around it). A prompt: the key encoder (all-MiniLM-L6-v2) reads at most 256 word pieces, so the rest of
# a longer prompt could not tell edits apart. A target: a fact, or one sentence (the hallucination task corrects
# sentences of up to ~100 tokens; on the embedded model the six longest WISE corrections, 83-102 tokens, converged in
# 11-21 steps and generate exactly: benchmarks/long_targets.py, 2026-12-02), but a 500-token target ended 60 steps at
# loss 1.56 without reproducing it. Longer answers are better split into edits.
MAX_PROMPT_TOKENS = 256
MAX_TARGET_TOKENS = 128


def check_text(value: object, what: str) -> str:
    """`value` as the text of a `what` ("prompt", "target", ...): a non-empty string that is valid Unicode."""
    if not isinstance(value, str):
        raise InvalidEditError(f"{what} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # lone surrogates: bytes that were not UTF-8 (argv, surrogateescape)
        char = value[err.start]
        byte = f"byte 0x{ord(char) - 0xDC00:02x}" if 0xDC80 <= ord(char) <= 0xDCFF else f"code point U+{ord(char):04X}"
        raise InvalidEditError(f"{what} is not valid UTF-8 text ({byte} at character {err.start + 1}); give the text "
                               "in UTF-8") from None
    if not value.strip():
        raise InvalidEditError(f"{what} is empty; give the text of the {what}")
    return value


def check_token_limits(prompt: EncodedPrompt, target_tokens: int | None = None) -> None:
    """Refuse a prompt over `MAX_PROMPT_TOKENS` or a target over `MAX_TARGET_TOKENS`, naming the limit."""
    length = sum(prompt.content)
    if length > MAX_PROMPT_TOKENS:
        raise InvalidEditError(f"the prompt takes {length} tokens; an edit's prompt may take at most "
                               f"{MAX_PROMPT_TOKENS} (sola.prompts.MAX_PROMPT_TOKENS): shorten it")
    if target_tokens is not None and target_tokens > MAX_TARGET_TOKENS:
        raise InvalidEditError(f"the target takes {target_tokens} tokens; an edit's target may take at most "
                               f"{MAX_TARGET_TOKENS} (sola.prompts.MAX_TARGET_TOKENS): an edit teaches a fact or "
                               "a sentence, so shorten it or split it into several edits")


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
