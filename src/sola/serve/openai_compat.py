"""The OpenAI-compatible routes of `sola serve`: `/v1/completions`, `/v1/chat/completions` and `/v1/models`, so that
the `openai` client and chat front-ends work unchanged. Answers are greedy (temperature and top_p are ignored), one
per prompt (`n` must be 1); `stream: true` sends OpenAI's chunks, ending with `data: [DONE]`; `finish_reason` is
"length" when `max_tokens` cut the answer, else "stop"; errors on these paths take OpenAI's shape
(`{"error": {"message", "type", "param", "code"}}`). Each answer is routed once from its prompt, and the route is in
the response's `sola` field (in the last chunk when streaming)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse

OPENAI_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models")


class HTTPError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        self.status, self.error, self.message = status, error, message


def error_body(path: str, status: int, error: str, message: str) -> dict[str, Any]:
    """An error as JSON: OpenAI's shape on the OpenAI paths (its clients show `error.message`), ours elsewhere."""
    if path in OPENAI_PATHS:
        return {"error": {"message": message, "type": error, "param": None, "code": status}}
    return {"error": error, "message": message}


def add_openai_routes(app: FastAPI, *, answer: Callable[..., Awaitable[dict[str, Any]]], tokenizer,
                      read_access: Callable, body: Callable, tokens: Callable[[Any, str], int],
                      model_name: str) -> None:
    """Register the three routes on `app`; `answer(prompt, max_tokens)` asks the service (routed, greedy)."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def finish(answer_text: str, limit: int) -> str:
        return "length" if count(answer_text) >= limit else "stop"

    def usage(prompts: list[str], answers: list[str]) -> dict[str, int]:
        prompt_tokens, completion_tokens = sum(map(count, prompts)), sum(map(count, answers))
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def pieces(text: str) -> list[str]:
        """`text` in the pieces its tokens decode to (they join back to `text` exactly, else one piece)."""
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        decoded = [tokenizer.decode(ids[:i], skip_special_tokens=True) for i in range(len(ids) + 1)]
        out = [b[len(a):] for a, b in zip(decoded, decoded[1:]) if b.startswith(a)]
        return out if "".join(out) == text and len(out) == len(ids) else [text]

    @app.post("/v1/completions", dependencies=[Depends(read_access)])
    async def completions(request: Request):
        """OpenAI-compatible text completion: one greedy answer per prompt; the route is in `sola`."""
        data = await body(request)
        if not isinstance(data, dict) or "prompt" not in data:
            raise HTTPError(400, "InvalidRequest", 'give {"prompt": "...", "max_tokens": 16}')
        _one_choice(data)
        prompts = data["prompt"] if isinstance(data["prompt"], list) else [data["prompt"]]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise HTTPError(400, "InvalidRequest", "prompt must be a string or a list of strings")
        limit = tokens(data.get("max_tokens", 16), "max_tokens")
        answers = [await answer(p, limit) for p in prompts]
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": data.get("model") or model_name}
        texts = [a["answer"] for a in answers]
        if data.get("stream"):
            def chunks() -> Iterator[dict[str, Any]]:
                for i, text in enumerate(texts):
                    for piece in pieces(text):
                        yield {**head, "choices": [{"index": i, "text": piece, "finish_reason": None,
                                                    "logprobs": None}]}
                    yield {**head, "choices": [{"index": i, "text": "", "finish_reason": finish(text, limit),
                                                "logprobs": None}], "sola": {"route": answers[i]["route"]}}
            return _sse(chunks())
        return {**head, "choices": [{"index": i, "text": text, "finish_reason": finish(text, limit), "logprobs": None}
                                    for i, text in enumerate(texts)],
                "usage": usage(prompts, texts), "sola": [{"route": a["route"]} for a in answers]}

    @app.post("/v1/chat/completions", dependencies=[Depends(read_access)])
    async def chat_completions(request: Request):
        """OpenAI-compatible chat: the last user message is the prompt (an edit is a fact about one question; earlier
        turns are not used). Greedy; the route is in `sola`."""
        data = await body(request)
        messages = data.get("messages") if isinstance(data, dict) else None
        if not isinstance(messages, list) or not messages:
            raise HTTPError(400, "InvalidRequest", 'give {"messages": [{"role": "user", "content": "..."}]}')
        _one_choice(data)
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            raise HTTPError(400, "InvalidRequest", "messages has no user message to answer")
        prompt = _text(users[-1].get("content"))
        limit = tokens(data.get("max_tokens", data.get("max_completion_tokens", 32)), "max_tokens")
        answered = await answer(prompt, limit)
        text, reason = answered["answer"], finish(answered["answer"], limit)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": data.get("model") or model_name}
        if data.get("stream"):
            head["object"] = "chat.completion.chunk"

            def chunks() -> Iterator[dict[str, Any]]:
                yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None, "logprobs": None}]}
                for piece in pieces(text):
                    yield {**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None,
                                                "logprobs": None}]}
                yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": reason, "logprobs": None}],
                       "sola": {"route": answered["route"]}}
            return _sse(chunks())
        return {**head, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": reason, "logprobs": None}],
                "usage": usage([prompt], [text]), "sola": {"route": answered["route"]}}

    @app.get("/v1/models", dependencies=[Depends(read_access)])
    def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "sola"}]}


def _sse(chunks: Iterator[dict[str, Any]]) -> StreamingResponse:
    """Server-sent events as OpenAI streams them: one `data:` line per chunk, then `data: [DONE]`. The answer is
    computed before the first chunk (an ask is not interleaved with others), then sent piece by piece."""
    def lines():
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _one_choice(data: dict) -> None:
    n = data.get("n", 1)
    if n is not None and n != 1:
        raise HTTPError(400, "InvalidRequest", f"n={n!r}: answers are greedy, so every choice would be the same; ask "
                        "with n=1")


def _text(content: Any) -> str:
    """A chat message's text: a string, or OpenAI's list of parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return "\n".join(texts)
    raise HTTPError(400, "InvalidRequest", "a message's content must be text")
