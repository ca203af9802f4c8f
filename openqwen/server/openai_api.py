"""OpenAI-compatible chat completions and models: a thin translation onto ModelService.

Messages become template messages (content parts joined, tool-call arguments decoded so the
template renders them as objects); tool_choice and response_format become a ChatSpec; replies
come back as `chat.completion` objects or `chat.completion.chunk` SSE events.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .errors import APIError, bad_request, error_body
from .generation import ChoiceState
from .openai_format import chat_logprobs, finish_reason, tool_call_json, usage
from .protocol_openai import ChatCompletionRequest, ChatMessage, NamedToolChoice
from .service import ChatSpec, ModelService
from .streaming import ClientGone, collect, merged, sse_data, sse_response

router = APIRouter()


def service_of(request: Request) -> ModelService:
    return request.app.state.service


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    svc = service_of(request)
    return {"object": "list", "data": [_model_card(svc, name) for name in svc.served_model_names]}


@router.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request) -> dict:
    svc = service_of(request)
    svc.check_model(model)
    return _model_card(svc, model)


def _model_card(svc: ModelService, name: str) -> dict:
    return {"id": name, "object": "model", "created": svc.created, "owned_by": "openqwen", "max_model_len": svc.max_model_len}


def _text_of(content: Any, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type == "text":
            texts.append(part.text or "")
        elif part.type in ("image_url", "input_image", "image"):
            raise bad_request(f"{where}: this model reads text only; image inputs need a vision (VL) model", where)
        else:
            raise bad_request(f"{where}: content part type `{part.type}` is not supported (use text)", where)
    return "".join(texts)


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    out = []
    for i, m in enumerate(messages):
        # content "" rather than None: templates read message.content unconditionally
        content = _text_of(m.content, f"messages[{i}].content") or ""
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": content}
        if m.reasoning_content is not None:
            msg["reasoning_content"] = m.reasoning_content
        if m.tool_calls:
            calls = []
            for call in m.tool_calls:
                try:
                    arguments = json.loads(call.function.arguments or "{}")
                except ValueError as exc:
                    raise bad_request(f"messages[{i}].tool_calls: arguments of `{call.function.name}` are not JSON", "messages") from exc
                calls.append({"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}})
            msg["tool_calls"] = calls
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            msg["name"] = m.name
        out.append(msg)
    return out


def chat_spec(body: ChatCompletionRequest) -> ChatSpec:
    spec = ChatSpec(
        messages=template_messages(body.messages),
        sampling=body.sampling_values(),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        tools=[t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        template_kwargs=dict(body.chat_template_kwargs or {}),
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        logit_bias=body.logit_bias,
    )
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        spec.tool_choice, spec.tool_name = "named", choice.function.name
    elif choice is not None:
        spec.tool_choice = choice
    if spec.tool_choice in ("required", "named") and not spec.tools:
        raise bad_request(f"tool_choice `{spec.tool_choice}` needs tools", "tool_choice")
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        spec.json_mode = True
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise bad_request("response_format json_schema needs json_schema.schema", "response_format")
        spec.response_schema = fmt.json_schema.schema_
    return spec


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    svc = service_of(request)
    svc.check_model(body.model)
    if body.top_logprobs and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    gen, _prompt = await svc.prepare_chat(chat_spec(body), "openai", request.state.request_id)
    handle = svc.loop.submit(gen)
    chat_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(_stream(svc, handle, chat_id, created, body, include_usage), [handle])
    try:
        [states] = await collect([handle], request)
    except ClientGone:
        return Response(status_code=499)
    choices = []
    for st in states:
        reasoning, content, calls = st.final()
        message: dict[str, Any] = {"role": "assistant", "content": (content or None) if calls else content}
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        if calls:
            message["tool_calls"] = [tool_call_json(c) for c in calls]
        choices.append({"index": st.index, "message": message, "finish_reason": finish_reason(st, bool(calls)),
                        "logprobs": chat_logprobs(svc.tokenizer, st.logprobs) if body.logprobs else None})
    return JSONResponse({"id": chat_id, "object": "chat.completion", "created": created, "model": body.model,
                         "choices": choices, "usage": usage(handle.prompt_tokens, states)})


async def _stream(svc: ModelService, handle, chat_id: str, created: int, body: ChatCompletionRequest, include_usage: bool) -> AsyncIterator[str]:
    def chunk(index: int, delta: dict, finish: str | None = None, logprobs: Any = None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        payload = {"id": chat_id, "object": "chat.completion.chunk", "created": created, "model": body.model, "choices": [choice]}
        if include_usage:
            payload["usage"] = None
        return sse_data(payload)

    n = handle.request.params.n
    states = [ChoiceState(i, handle.request.parse) for i in range(n)]
    try:
        for i in range(n):
            yield chunk(i, {"role": "assistant", "content": ""})
        async for _, update in merged([handle]):
            st = states[update.index]
            _, events = st.apply(update)
            lp = chat_logprobs(svc.tokenizer, update.new_logprobs) if body.logprobs and update.new_logprobs else None
            calls_before = st.tool_calls_seen - sum(1 for kind, _ in events if kind == "tool_call")
            for kind, value in events:
                if kind == "tool_call":
                    delta = {"tool_calls": [{"index": calls_before, **tool_call_json(value)}]}
                    calls_before += 1
                else:
                    delta = {"reasoning_content" if kind == "reasoning" else "content": value}
                yield chunk(st.index, delta, logprobs=lp)
                lp = None
            if lp is not None:
                yield chunk(st.index, {"content": ""}, logprobs=lp)
            if st.finished:
                yield chunk(st.index, {}, finish_reason(st, st.tool_calls_seen > 0))
        if include_usage:
            yield sse_data({"id": chat_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
                            "choices": [], "usage": usage(handle.prompt_tokens, states)})
    except APIError as exc:
        yield sse_data(error_body("/v1/chat/completions", exc.status, exc.message))
    finally:
        handle.close()
    yield "data: [DONE]\n\n"
