"""LLM: the offline Python API, shaped like vLLM's so users already know it.

    from openqwen import LLM, SamplingParams
    llm = LLM("qwen2.5-coder-0.5b-instruct")
    out = llm.chat([{"role": "user", "content": "Write hello world in C"}], SamplingParams(max_tokens=64))
    print(out[0].outputs[0].text)
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from tqdm import tqdm

from .engine.llm_engine import LLMEngine, RequestOutput
from .engine.sampling_params import SamplingParams
from .loading import LoadedModel, load_model
from .registry import DEFAULT_MODEL
from .tokenizer.parsers import parse_reply, prompt_opens_reasoning

Messages = list[dict[str, Any]]


class LLM:
    def __init__(self, model: str = DEFAULT_MODEL, device: str | None = None, dtype: str | None = None, *,
                 enforce_eager: bool = False, **engine_options: Any) -> None:
        """`model`: a Hugging Face directory, a .gguf file or a registry name. `enforce_eager`: run
        every step eagerly, without CUDA graphs (vLLM's name). `engine_options`: max_model_len,
        max_num_seqs, max_num_batched_tokens, block_size, kv_cache_gb, gpu_memory_utilization,
        enable_prefix_caching, quantize, kv_cache_dtype ("auto" or "fp8")."""
        start = time.perf_counter()
        self.loaded: LoadedModel = load_model(model, device=device, dtype=dtype, enforce_eager=enforce_eager, **engine_options)
        self.engine: LLMEngine = self.loaded.engine
        self.tokenizer = self.loaded.tokenizer
        self.load_seconds = time.perf_counter() - start

    # -- token ids / text -------------------------------------------------------------------
    def generate(self, prompts: str | list[int] | Sequence[str | list[int]], sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """One RequestOutput per prompt, in order. A prompt is a string or a list of token ids."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = self._params_per_prompt(sampling_params, len(prompts))
        ids = [self.engine.add_request(p, sp) for p, sp in zip(prompts, params)]
        return self._run_to_completion(ids, use_tqdm)

    def stream(self, prompt: str | list[int], sampling_params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yields the request's output each time it grows; the last one has finished=True.
        Closing the generator early aborts the request."""
        request_id = self.engine.add_request(prompt, sampling_params or self.default_sampling_params())
        finished = False
        try:
            while not finished:
                for out in self.engine.step():
                    if out.request_id == request_id:
                        finished = out.finished
                        yield out
        finally:
            if not finished:
                self.engine.abort(request_id)

    # -- chat -------------------------------------------------------------------------------
    def apply_chat_template(self, messages: Messages, tools: list[dict] | None = None, add_generation_prompt: bool = True,
                            chat_template_kwargs: dict[str, Any] | None = None) -> str:
        return self.tokenizer.render_chat(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, **(chat_template_kwargs or {})
        )

    def chat(self, messages: Messages | list[Messages], sampling_params: SamplingParams | None = None, tools: list[dict] | None = None,
             chat_template_kwargs: dict[str, Any] | None = None, use_tqdm: bool = False) -> list[RequestOutput]:
        """Render each conversation with the model's own template, generate, then split the reply
        into reasoning_content, content text and parsed tool_calls."""
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        prompts = [self.apply_chat_template(conv, tools, True, chat_template_kwargs) for conv in conversations]
        outputs = self.generate(prompts, sampling_params or self.default_sampling_params(), use_tqdm)
        for prompt, out in zip(prompts, outputs):
            for completion in out.outputs:
                self.parse_reply(completion, prompt, tools)
        return outputs

    @staticmethod
    def parse_reply(completion, prompt: str, tools: list[dict] | None) -> None:
        """Split `completion.text` in place, as the server does for tool_choice auto: with tools, a
        reply that is only one tool's call JSON (small models write that) counts as the call."""
        reasoning, content, calls = parse_reply(completion.text, starts_in_reasoning=prompt_opens_reasoning(prompt),
                                                tools=tools, bare_json_calls=bool(tools))
        completion.reasoning_content = reasoning
        completion.tool_calls = calls
        completion.text = content

    # -- helpers ----------------------------------------------------------------------------
    def default_sampling_params(self) -> SamplingParams:
        """The model's recommended sampling (generation_config.json, or the family's published defaults)."""
        return SamplingParams(**self.loaded.sampling_defaults)

    def _params_per_prompt(self, params, count: int) -> list[SamplingParams]:
        if params is None:
            return [self.default_sampling_params()] * count
        if isinstance(params, SamplingParams):
            return [params] * count
        if len(params) != count:
            raise ValueError(f"{len(params)} sampling params for {count} prompts")
        return list(params)

    def _run_to_completion(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        pending = set(request_ids)
        results: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(request_ids), desc="Generating", unit="req", disable=not use_tqdm)
        try:
            while pending:
                for out in self.engine.step():
                    if out.finished and out.request_id in pending:
                        results[out.request_id] = out
                        pending.discard(out.request_id)
                        bar.update(1)
        finally:
            bar.close()
            for request_id in pending:  # interrupted: free what is still running
                self.engine.abort(request_id)
        return [results[r] for r in request_ids]
