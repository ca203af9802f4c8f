"""Pieces of OpenAI responses built from engine results: logprobs, usage, tool calls, finish reasons."""

from __future__ import annotations

from typing import Any

from ..engine.sampler import TokenLogprobs
from ..tokenizer.parsers import ToolCall
from ..tokenizer.tokenizer import Tokenizer
from .generation import ChoiceState

_FLOOR = -9999.0  # -inf is not JSON; vLLM reports this floor instead


def _lp(value: float) -> float:
    return value if value > _FLOOR else _FLOOR


def token_text(tokenizer: Tokenizer, token_id: int) -> tuple[str, list[int]]:
    raw = tokenizer.token_bytes(token_id)
    return raw.decode("utf-8", errors="replace"), list(raw)


def chat_logprobs(tokenizer: Tokenizer, logprobs: list[TokenLogprobs] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    content = []
    for lp in logprobs:
        text, raw = token_text(tokenizer, lp.token_id)
        top = []
        for token_id, value in lp.top:
            t, b = token_text(tokenizer, token_id)
            top.append({"token": t, "logprob": _lp(value), "bytes": b})
        content.append({"token": text, "logprob": _lp(lp.logprob), "bytes": raw, "top_logprobs": top})
    return {"content": content}


def completion_logprobs(tokenizer: Tokenizer, entries: list[TokenLogprobs | None], token_ids: list[int], offset: int) -> dict[str, Any]:
    """Legacy completions format; `entries[i]` is None for a token without a logprob (the first
    prompt token with echo). `offset`: text_offset of the first token."""
    tokens, values, tops, offsets = [], [], [], []
    for token_id, lp in zip(token_ids, entries):
        text, _ = token_text(tokenizer, token_id)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        if lp is None:
            values.append(None)
            tops.append(None)
            continue
        values.append(_lp(lp.logprob))
        top: dict[str, float] = {}
        for other, value in lp.top:
            top.setdefault(token_text(tokenizer, other)[0], _lp(value))
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def tool_call_json(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def finish_reason(state: ChoiceState, has_tool_calls: bool) -> str | None:
    if state.finish_reason is None:
        return None
    if has_tool_calls and state.finish_reason == "stop":
        return "tool_calls"
    return "stop" if state.finish_reason == "abort" else state.finish_reason


def usage(prompt_tokens: int, states: list[ChoiceState]) -> dict[str, Any]:
    completion = sum(len(s.token_ids) for s in states)
    cached = max((s.num_cached_tokens for s in states), default=0)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}
