"""The one internal request type both APIs translate onto, and what flows back from the engine.

An OpenAI or Anthropic handler builds a `GenerationRequest` (prompt token ids, SamplingParams,
how to parse the reply), the engine loop runs it and sends back `ChoiceUpdate`s, and a
`ChoiceState` per choice turns those into text deltas and parsed events (reasoning, content,
tool calls) for streaming, or into the final parsed reply.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from ..engine.sampler import TokenLogprobs
from ..engine.sampling_params import LogitsProcessor, SamplingParams
from ..tokenizer.parsers import ToolCall, parse_reply
from ..tokenizer.stream_parser import StreamParser


def new_request_id(prefix: str = "req") -> str:
    """An engine request id: the HTTP request id (or a prefix) plus a random part, unique even
    when a client reuses its x-request-id."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class ParseOptions:
    """How to read the model's text: does it start inside `<think>`, and which tools may it call."""

    starts_in_reasoning: bool = False
    tools: list[dict[str, Any]] | None = None
    detect_tool_calls: bool = False
    bare_json_calls: bool = False  # also take a reply that is only a call's JSON (tool_choice auto)
    raw: bool = False  # plain completions: no parsing at all


@dataclass
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams  # params.n choices; each runs as its own engine request
    parse: ParseOptions = field(default_factory=ParseOptions)
    # Stateful logits processors (grammar matchers, thinking budgets), one list per choice.
    choice_processors: list[list[LogitsProcessor]] | None = None
    api: str = "openai"  # metrics label
    prompt_logprobs: bool = False  # completions echo with logprobs: score the prompt first

    def choice_params(self, index: int) -> SamplingParams:
        """The params of choice `index`: n=1, the seed offset as the engine does for its n samples."""
        p = self.params
        seed = None if p.seed is None else p.seed + index
        extra = self.choice_processors[index] if self.choice_processors else []
        return SamplingParams(**{**vars(p), "n": 1, "seed": seed, "logits_processors": [*p.logits_processors, *extra]})


@dataclass
class ChoiceUpdate:
    """What one engine step added to one choice; built in the engine thread, read in asyncio."""

    index: int
    text: str  # full text so far
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprobs] | None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    num_cached_tokens: int = 0


class ChoiceState:
    """Accumulates one choice's updates; yields parsed events for streaming."""

    def __init__(self, index: int, parse: ParseOptions) -> None:
        self.index, self.parse = index, parse
        self.text = ""
        self.token_ids: list[int] = []
        self.logprobs: list[TokenLogprobs] = []
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self._sent = 0  # characters of text already turned into events
        self._parser = None if parse.raw else StreamParser(
            starts_in_reasoning=parse.starts_in_reasoning, tools=parse.tools,
            detect_tool_calls=parse.detect_tool_calls, bare_json_calls=parse.bare_json_calls,
        )
        self.tool_calls_seen = 0
        self.num_cached_tokens = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def apply(self, update: ChoiceUpdate) -> tuple[str, list[tuple[str, Any]]]:
        """Record an update; returns (raw text delta, parsed events for that delta)."""
        self.text = update.text
        self.token_ids += update.new_token_ids
        self.num_cached_tokens = max(self.num_cached_tokens, update.num_cached_tokens)
        if update.new_logprobs:
            self.logprobs += update.new_logprobs
        delta = self.text[self._sent:]
        self._sent = len(self.text)
        if update.finish_reason is not None:
            self.finish_reason, self.stop_reason = update.finish_reason, update.stop_reason
        if self._parser is None:
            events = [("content", delta)] if delta else []
        else:
            events = self._parser.feed(delta) if delta else []
            if self.finished:
                events += self._parser.finish()
        self.tool_calls_seen += sum(1 for kind, _ in events if kind == "tool_call")
        return delta, events

    def final(self) -> tuple[str | None, str, list[ToolCall]]:
        """(reasoning, content, tool calls) of the whole reply, parsed as LLM.chat does."""
        if self.parse.raw:
            return None, self.text, []
        return parse_reply(self.text, starts_in_reasoning=self.parse.starts_in_reasoning, tools=self.parse.tools,
                           detect_tool_calls=self.parse.detect_tool_calls, bare_json_calls=self.parse.bare_json_calls)
