"""The model provider both APIs share: served names, limits, prompt rendering, sampling, grammars.

An API handler translates its body into template messages plus a `ChatSpec`; `prepare_chat`
turns that into the one internal `GenerationRequest` (prompt token ids, SamplingParams, parse
options, per-choice logits processors) that the engine loop runs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from ..engine.sampling_params import SamplingParams
from ..llm import LLM
from ..tokenizer.chat_template import ChatTemplateError
from ..tokenizer.parsers import prompt_opens_reasoning
from .engine_loop import EngineLoop
from .errors import APIError, bad_request
from .generation import GenerationRequest, ParseOptions, new_request_id
from .structured import Grammars, ThinkingBudget, json_grammar, tool_call_grammar


@dataclass
class Limits:
    max_body_bytes: int = 8 * 2**20
    max_prompt_tokens: int | None = None  # None: the model's context length
    max_queue: int = 256  # sequences that may wait for a running slot


@dataclass
class ChatSpec:
    """A chat request in API-neutral terms."""

    messages: list[dict[str, Any]]
    sampling: dict[str, Any]  # SamplingParams fields the client set
    max_tokens: int | None = None
    clamp_max_tokens: bool = False  # Anthropic: cut max_tokens to the context instead of refusing
    tools: list[dict[str, Any]] | None = None  # OpenAI function tools
    tool_choice: str = "auto"  # auto | none | required | named
    tool_name: str | None = None
    parallel_tool_calls: bool = True
    response_schema: dict[str, Any] | None = None
    json_mode: bool = False
    thinking: bool | None = None  # explicit switch; None: the template's default
    thinking_budget: int | None = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    logprobs: int | None = None
    logit_bias: dict[str, float] | None = None


def _logit_bias_processor(bias: dict[int, float]):
    def apply(_output_ids, logits):
        for token, value in bias.items():
            logits[token] += value
        return logits

    return apply


class ModelService:
    def __init__(self, llm: LLM, served_model_names: list[str], limits: Limits, observer: Any = None) -> None:
        self.llm, self.tokenizer, self.engine = llm, llm.tokenizer, llm.engine
        self.served_model_names, self.limits = served_model_names, limits
        self.loop = EngineLoop(llm.engine, max_queue=limits.max_queue, observer=observer)
        self.vocab_size = llm.loaded.args.vocab_size
        self.grammars = Grammars(self.tokenizer, self.vocab_size, sorted(llm.engine.eos_token_ids))
        self.supports_thinking = "enable_thinking" in (self.tokenizer.chat_template or "")
        self.think_start_id = self.tokenizer.token_to_id("<think>")
        self.think_end_id = self.tokenizer.token_to_id("</think>")
        self.max_model_len = llm.engine.max_model_len
        self.created = 0

    @property
    def model_name(self) -> str:
        return self.served_model_names[0]

    def check_model(self, name: str) -> None:
        if name not in self.served_model_names:
            raise APIError(404, f"The model `{name}` does not exist; this server serves {', '.join(self.served_model_names)}",
                           param="model", code="model_not_found")

    # -- prompt ------------------------------------------------------------------------------------
    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, template_kwargs: dict[str, Any]) -> str:
        try:
            return self.llm.apply_chat_template(messages, tools or None, True, template_kwargs)
        except ChatTemplateError as exc:
            raise bad_request(f"the chat template rejected these messages: {exc}", "messages") from exc

    def tokenize(self, prompt: str | list[int]) -> list[int]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise bad_request("the prompt is empty", "prompt")
        limit = min(self.limits.max_prompt_tokens or self.max_model_len, self.max_model_len - 1)
        if len(ids) > limit:
            raise bad_request(f"the prompt has {len(ids)} tokens; this server accepts at most {limit} "
                              f"(context length {self.max_model_len})", "messages")
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise bad_request(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})", "prompt")
        return ids

    def sampling_params(self, values: dict[str, Any], max_tokens: int | None, prompt_len: int, *, clamp: bool = False,
                        logprobs: int | None = None, logit_bias: dict[str, float] | None = None) -> SamplingParams:
        room = self.max_model_len - prompt_len
        if max_tokens is None:
            max_tokens = room
        elif max_tokens > room:
            if not clamp or max_tokens > 16 * self.max_model_len:
                raise bad_request(f"max_tokens is {max_tokens}, but the prompt has {prompt_len} tokens and the context "
                                  f"length is {self.max_model_len}: at most {room} tokens can be generated", "max_tokens")
            max_tokens = room
        merged = {**self.llm.loaded.sampling_defaults, **values, "max_tokens": max_tokens, "logprobs": logprobs}
        if logit_bias:
            merged["logits_processors"] = [_logit_bias_processor(self._parse_bias(logit_bias))]
        for token in merged.get("stop_token_ids", []):
            if not 0 <= token < self.vocab_size:
                raise bad_request(f"stop token id {token} is outside the vocabulary", "stop_token_ids")
        try:
            return SamplingParams(**merged)
        except ValueError as exc:
            raise bad_request(str(exc)) from exc

    def _parse_bias(self, bias: dict[str, float]) -> dict[int, float]:
        try:
            parsed = {int(k): max(-100.0, min(100.0, float(v))) for k, v in bias.items()}
        except ValueError as exc:
            raise bad_request("logit_bias keys must be token ids", "logit_bias") from exc
        if any(not 0 <= k < self.vocab_size for k in parsed):
            raise bad_request("logit_bias has a token id outside the vocabulary", "logit_bias")
        return parsed

    # -- chat --------------------------------------------------------------------------------------
    async def prepare_chat(self, spec: ChatSpec, api: str, request_id: str) -> tuple[GenerationRequest, str]:
        """Render, tokenize and compile off the event loop; returns the request and its prompt text."""
        return await asyncio.to_thread(self._prepare_chat, spec, api, request_id)

    def _prepare_chat(self, spec: ChatSpec, api: str, request_id: str) -> tuple[GenerationRequest, str]:
        for tool in spec.tools or []:
            check_json_schema(tool["function"].get("parameters") or {}, f"tools[{tool['function']['name']}].parameters")
        if spec.response_schema is not None:
            check_json_schema(spec.response_schema, "response_format.json_schema.schema")
        use_tools = bool(spec.tools) and spec.tool_choice != "none"
        grammar = self._grammar(spec, use_tools)
        kwargs = dict(spec.template_kwargs)
        if spec.thinking is not None:
            kwargs["enable_thinking"] = spec.thinking
        elif grammar is not None and "enable_thinking" not in kwargs:
            kwargs["enable_thinking"] = False  # constrained output starts at once unless asked otherwise
        prompt = self.render(spec.messages, spec.tools if use_tools else None, kwargs)
        ids = self.tokenize(prompt)
        params = self.sampling_params(spec.sampling, spec.max_tokens, len(ids), clamp=spec.clamp_max_tokens,
                                      logprobs=spec.logprobs, logit_bias=spec.logit_bias)
        thinking_on = self.supports_thinking and self.think_end_id is not None and kwargs.get("enable_thinking", True)
        starts_in_reasoning = prompt_opens_reasoning(prompt)
        opener = None if starts_in_reasoning else self.think_start_id
        per_choice = []
        for _ in range(params.n):
            processors = []
            if thinking_on and spec.thinking_budget is not None:
                processors.append(ThinkingBudget(spec.thinking_budget, self.think_end_id, opener))
            if grammar is not None:
                if thinking_on and spec.thinking_budget is None:  # the answer must get its turn
                    processors.append(ThinkingBudget(max(1, (params.max_tokens or 2) // 2), self.think_end_id, opener))
                processors.append(self.grammars.processor(grammar, self.think_end_id if thinking_on else None))
            per_choice.append(processors)
        parse = ParseOptions(starts_in_reasoning=starts_in_reasoning, tools=spec.tools if use_tools else None,
                             detect_tool_calls=use_tools, bare_json_calls=use_tools and spec.tool_choice == "auto")
        request = GenerationRequest(new_request_id(request_id), ids, params, parse, per_choice if any(per_choice) else None, api)
        return request, prompt

    def _grammar(self, spec: ChatSpec, use_tools: bool) -> str | None:
        if use_tools and spec.tool_choice in ("required", "named"):
            tools = spec.tools
            if spec.tool_choice == "named":
                tools = [t for t in spec.tools if t["function"]["name"] == spec.tool_name]
                if not tools:
                    raise bad_request(f"tool_choice names `{spec.tool_name}`, which is not among the tools", "tool_choice")
            return self.grammars.compile(tool_call_grammar(tools, multiple=spec.parallel_tool_calls and spec.tool_choice == "required"))
        if spec.response_schema is not None or spec.json_mode:
            return self.grammars.compile(json_grammar(spec.response_schema))
        return None

    def count_tokens(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, kwargs: dict[str, Any]) -> int:
        return len(self.tokenizer.encode(self.render(messages, tools, kwargs)))


def check_json_schema(schema: Any, where: str) -> None:
    """A 400 for a schema that is not a valid JSON Schema (by its own metaschema)."""
    if not isinstance(schema, dict):
        raise bad_request(f"{where} must be a JSON Schema object", where)
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise bad_request(f"{where} is not a valid JSON Schema: {exc.message}", where) from exc
