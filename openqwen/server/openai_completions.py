"""OpenAI legacy completions: raw prompts (text or token ids, one or many), echo and logprobs."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..engine.llm_engine import LLMEngine
from ..engine.sampler import TokenLogprobs
from .errors import APIError, bad_request, error_body
from .generation import ChoiceState, GenerationRequest, ParseOptions, new_request_id
from .openai_api import service_of
from .openai_format import completion_logprobs, usage
from .protocol_openai import CompletionRequest
from .streaming import ClientGone, collect, merged, sse_data, sse_response

router = APIRouter()
MAX_ECHO_LOGPROB_TOKENS = 512  # scoring a prompt holds [tokens, vocab] fp32 logits at once


def _prompts(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request("the prompt is empty", "prompt")
    if isinstance(prompt[0], int):
        return [list(prompt)]
    return list(prompt)


def _score_prompt(ids: list[int], k: int):
    """Logprobs of each prompt token given the ones before it (the first has none)."""

    def run(engine: LLMEngine) -> list[TokenLogprobs | None]:
        logprobs = engine.runner.score(ids).log_softmax(dim=-1)
        out: list[TokenLogprobs | None] = [None]
        for pos in range(1, len(ids)):
            row = logprobs[pos - 1]
            values, top_ids = row.topk(k) if k else (row[:0], row[:0])
            top = list(zip(top_ids.tolist(), values.tolist()))
            out.append(TokenLogprobs(ids[pos], row[ids[pos]].item(), top))
        return out

    return run


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    svc = service_of(request)
    svc.check_model(body.model)
    if body.suffix:
        raise bad_request("suffix (fill-in-the-middle) is not supported", "suffix")
    values = body.sampling_values()
    gens, texts = [], []
    for prompt in _prompts(body.prompt):
        ids = svc.tokenize(prompt)
        params = svc.sampling_params(values, body.max_tokens, len(ids), logprobs=body.logprobs, logit_bias=body.logit_bias)
        gens.append(GenerationRequest(new_request_id(request.state.request_id), ids, params, ParseOptions(raw=True), api="openai"))
        texts.append(prompt if isinstance(prompt, str) else svc.tokenizer.decode(ids))
    prompt_lps: list[list[TokenLogprobs | None] | None] = [None] * len(gens)
    if body.echo and body.logprobs is not None:
        for i, gen in enumerate(gens):
            if len(gen.prompt_token_ids) > MAX_ECHO_LOGPROB_TOKENS:
                raise bad_request(f"echo with logprobs is limited to prompts of {MAX_ECHO_LOGPROB_TOKENS} tokens", "echo")
            prompt_lps[i] = await svc.loop.call(_score_prompt(gen.prompt_token_ids, body.logprobs))
    handles = []
    try:
        for gen in gens:
            handles.append(svc.loop.submit(gen))
    except APIError:
        for handle in handles:
            handle.close()
        raise
    cmpl_id, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    ctx = _Context(svc, body, cmpl_id, created, texts, gens, prompt_lps)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(ctx.stream(handles, include_usage), handles)
    try:
        results = await collect(handles, request)
    except ClientGone:
        return Response(status_code=499)
    choices = []
    for p, states in enumerate(results):
        for st in states:
            choices.append({"index": p * body.n + st.index, "text": (texts[p] if body.echo else "") + st.text,
                            "logprobs": ctx.logprobs(p, st.token_ids, st.logprobs, first=True),
                            "finish_reason": _finish(st)})
    total = _usage(handles, results)
    return JSONResponse({"id": cmpl_id, "object": "text_completion", "created": created, "model": body.model,
                         "choices": choices, "usage": total})


def _finish(st: ChoiceState) -> str | None:
    return None if st.finish_reason is None else ("stop" if st.finish_reason == "abort" else st.finish_reason)


def _usage(handles, results: list[list[ChoiceState]]) -> dict[str, Any]:
    parts = [usage(h.prompt_tokens, states) for h, states in zip(handles, results)]
    prompt = sum(p["prompt_tokens"] for p in parts)
    completion = sum(p["completion_tokens"] for p in parts)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _Context:
    def __init__(self, svc, body: CompletionRequest, cmpl_id: str, created: int, texts: list[str], gens, prompt_lps) -> None:
        self.svc, self.body, self.id, self.created, self.texts, self.prompt_lps = svc, body, cmpl_id, created, texts, prompt_lps
        self.prompt_ids = [g.prompt_token_ids for g in gens]

    def logprobs(self, p: int, token_ids: list[int], lps: list[TokenLogprobs], *, first: bool, offset: int = 0) -> dict | None:
        """Logprobs of generated tokens, preceded by the prompt's when echoing (first piece only)."""
        if self.body.logprobs is None:
            return None
        entries: list[TokenLogprobs | None] = list(lps)
        ids = list(token_ids)
        if first and self.body.echo:
            entries, ids = list(self.prompt_lps[p] or []) + entries, self.prompt_ids[p] + ids
        return completion_logprobs(self.svc.tokenizer, entries, ids, offset)

    def chunk(self, index: int, text: str, logprobs: dict | None, finish: str | None) -> str:
        return sse_data({"id": self.id, "object": "text_completion", "created": self.created, "model": self.body.model,
                         "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]})

    async def stream(self, handles, include_usage: bool) -> AsyncIterator[str]:
        n = self.body.n
        states = [[ChoiceState(i, h.request.parse) for i in range(n)] for h in handles]
        offsets = {}
        try:
            if self.body.echo:
                for p in range(len(handles)):
                    for i in range(n):
                        yield self.chunk(p * n + i, self.texts[p], self.logprobs(p, [], [], first=True), None)
                        offsets[p * n + i] = len(self.texts[p])
            async for p, update in merged(handles):
                st = states[p][update.index]
                delta, _ = st.apply(update)
                index = p * n + st.index
                lps = self.logprobs(p, update.new_token_ids, update.new_logprobs or [], first=False, offset=offsets.get(index, 0))
                offsets[index] = offsets.get(index, 0) + len(delta)
                if delta or lps or st.finished:
                    yield self.chunk(index, delta, lps, _finish(st))
            if include_usage:
                yield sse_data({"id": self.id, "object": "text_completion", "created": self.created, "model": self.body.model,
                                "choices": [], "usage": _usage(handles, states)})
        except APIError as exc:
            yield sse_data(error_body("/v1/completions", exc.status, exc.message))
        finally:
            for handle in handles:
                handle.close()
        yield "data: [DONE]\n\n"
