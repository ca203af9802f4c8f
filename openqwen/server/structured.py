"""Constrained decoding with llguidance, and the thinking budget, as SamplingParams logits processors.

A processor is `fn(output_token_ids, logits[V]) -> logits`, called in the engine thread once per
step for its sequence. `GrammarProcessor` keeps one llguidance matcher, feeds it the tokens
generated since the last call and masks every token the grammar forbids with -inf, so the reply
always parses (JSON mode, a JSON schema, or forced tool calls). Each choice gets its own processor
(see GenerationRequest.processor_factory) because a matcher is per sequence.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import torch

from ..tokenizer.tokenizer import Tokenizer
from .errors import bad_request

_BITS = torch.arange(32, dtype=torch.int32)
# Compact JSON (`{"a": 1, "b": [2, 3]}`): with free whitespace a weak model can emit blanks forever.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class Grammars:
    """Compiles grammars against the model's vocabulary (built once, ~2 s, on first use)."""

    def __init__(self, tokenizer: Tokenizer, model_vocab_size: int, eos_token_ids: list[int]) -> None:
        self._tokenizer, self._vocab, self._eos = tokenizer, model_vocab_size, sorted(eos_token_ids)
        self._lltok = None
        self._lock = threading.Lock()

    def lltokenizer(self):
        import llguidance

        with self._lock:
            if self._lltok is None:
                tok = self._tokenizer

                class _Vocab:  # what llguidance.TokenizerWrapper reads
                    eos_token_id = self._eos[0] if self._eos else tok.eos_token_id
                    bos_token_id = None
                    tokens = [tok.token_bytes(i) for i in range(tok.vocab_size)]
                    special_token_ids = [i for i in range(tok.vocab_size) if tok.is_special(i)]

                    def __call__(self, text: bytes | str) -> list[int]:
                        return tok.encode(text.decode("utf-8", "replace") if isinstance(text, bytes) else text)

                self._lltok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocab()), n_vocab=self._vocab,
                                                     eos_token=self._eos or None)
            return self._lltok

    def compile(self, grammar: str) -> str:
        """Check a grammar (from json_schema / lark below); raises a 400 APIError if it is unusable."""
        from llguidance import LLMatcher

        error = LLMatcher.validate_grammar(grammar, self.lltokenizer())
        if error:
            raise bad_request(f"the grammar for this request cannot be used: {error}", "response_format")
        return grammar

    def processor(self, grammar: str, start_after: int | None = None) -> GrammarProcessor:
        return GrammarProcessor(self.lltokenizer(), grammar, self._vocab, start_after)


def json_grammar(schema: dict[str, Any] | None) -> str:
    """A grammar for one JSON value: any object (json_object mode) or one matching `schema`."""
    from llguidance import LLMatcher

    try:
        return LLMatcher.grammar_from_json_schema(schema if schema is not None else {"type": "object"}, overrides=JSON_OPTIONS)
    except ValueError as exc:
        raise bad_request(f"invalid JSON schema: {exc}", "response_format") from exc


def tool_call_grammar(tools: list[dict[str, Any]], *, multiple: bool) -> str:
    """Hermes tool calls (`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`) over
    the given OpenAI-style tools: used for tool_choice "required" (one or more) and a named tool."""
    from llguidance import LLMatcher

    variants = []
    for tool in tools:
        fn = tool["function"]
        variants.append({
            "type": "object",
            "properties": {"name": {"const": fn["name"]}, "arguments": fn.get("parameters") or {"type": "object"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    schema = {**(variants[0] if len(variants) == 1 else {"anyOf": variants}), "x-guidance": JSON_OPTIONS}
    call = '"<tool_call>\\n" body "\\n</tool_call>"'
    start = f"start: call (\"\\n\" call)*\ncall: {call}" if multiple else f"start: {call}"
    return LLMatcher.grammar_from_lark(f"{start}\nbody: %json {json.dumps(schema)}\n")


class GrammarProcessor:
    """Masks logits to what the grammar allows next. `start_after` (a token id, e.g. `</think>`):
    leave the text free until that token has been generated, then constrain what follows."""

    def __init__(self, lltokenizer, grammar: str, vocab_size: int, start_after: int | None = None) -> None:
        from llguidance import LLMatcher

        self._matcher = LLMatcher(lltokenizer, grammar, log_level=0)
        if self._matcher.is_error():
            raise bad_request(f"the grammar for this request cannot be used: {self._matcher.get_error()}")
        self._vocab, self._start_after = vocab_size, start_after
        self._begin: int | None = None if start_after is not None else 0
        self._consumed = 0

    def __call__(self, output_token_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        if self._begin is None:
            if self._start_after not in output_token_ids:
                return logits
            self._begin = output_token_ids.index(self._start_after) + 1
            self._consumed = self._begin
        new = output_token_ids[self._consumed:]
        if new:
            self._matcher.consume_tokens(new)
            self._consumed = len(output_token_ids)
        if self._matcher.is_error():
            return logits  # cannot happen when every token came through the mask; do not wedge
        words = torch.frombuffer(bytearray(self._matcher.compute_bitmask()), dtype=torch.int32)
        allowed = ((words[:, None] >> _BITS) & 1).flatten().bool()
        mask = torch.zeros(logits.shape[-1], dtype=torch.bool)
        n = min(allowed.numel(), mask.numel())
        mask[:n] = allowed[:n]
        return logits.masked_fill(~mask.to(logits.device), float("-inf"))


class ThinkingBudget:
    """Anthropic's `thinking.budget_tokens`: the reply opens with `<think>` (unless the prompt
    already did) and, once `budget` tokens went by without `</think>`, `</think>` is forced, after
    which the model answers. Also bounds reasoning before constrained output gets its turn."""

    def __init__(self, budget: int, think_end_id: int, think_start_id: int | None = None) -> None:
        self._budget, self._end, self._start = budget, think_end_id, think_start_id

    def __call__(self, output_token_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        if not output_token_ids and self._start is not None:
            return _only(logits, self._start)
        if len(output_token_ids) < self._budget or self._end in output_token_ids:
            return logits
        return _only(logits, self._end)


def _only(logits: torch.Tensor, token: int) -> torch.Tensor:
    forced = torch.full_like(logits, float("-inf"))
    forced[token] = 0.0
    return forced
