"""Anthropic-compatible Messages API: a thin translation onto ModelService.

Blocks map onto the chat template's messages: text joins into content, `thinking` becomes
`reasoning_content`, `tool_use` becomes an assistant tool call and `tool_result` a `tool` message.
`thinking: {type: enabled, budget_tokens}` turns on the template's thinking mode and forces
`</think>` once the budget is spent. Replies come back as a `message` or as the standard event
stream (message_start, ping, content_block_start/delta/stop, message_delta, message_stop).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .errors import APIError, bad_request, error_body
from .generation import ChoiceState
from .protocol_anthropic import ContentBlock, CountTokensRequest, MessagesBase, MessagesRequest
from .service import ChatSpec, ModelService
from .streaming import ClientGone, collect, merged, sse_event, sse_response, with_heartbeat

router = APIRouter()
PING_SECONDS = 10.0


def _service(request: Request) -> ModelService:
    return request.app.state.service


def _text(blocks: str | list[ContentBlock] | None, where: str) -> str:
    if blocks is None or isinstance(blocks, str):
        return blocks or ""
    parts = []
    for b in blocks:
        if b.type == "text":
            parts.append(b.text or "")
        elif b.type in ("image", "document"):
            raise bad_request(f"{where}: this model reads text only; `{b.type}` blocks need a vision (VL) model")
        else:
            raise bad_request(f"{where}: content block type `{b.type}` is not supported here")
    return "".join(parts)


def template_messages(body: MessagesBase) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if body.system:
        out.append({"role": "system", "content": _text(body.system, "system")})
    for i, m in enumerate(body.messages):
        where = f"messages[{i}].content"
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
        elif m.role == "system":  # Qwen templates render a later system turn in place
            out.append({"role": "system", "content": _text(m.content, where)})
        elif m.role == "user":
            pending: list[str] = []
            for b in m.content:
                if b.type == "tool_result":
                    if pending:
                        out.append({"role": "user", "content": "".join(pending)})
                        pending = []
                    text = _text(b.content, where)
                    out.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": f"Error: {text}" if b.is_error else text})
                else:
                    pending.append(_text([b], where))
            if pending or not m.content:
                out.append({"role": "user", "content": "".join(pending)})
        else:
            texts, reasoning, calls = [], [], []
            for b in m.content:
                if b.type == "text":
                    texts.append(b.text or "")
                elif b.type == "thinking":
                    reasoning.append(b.thinking or "")
                elif b.type == "tool_use":
                    calls.append({"id": b.id, "type": "function", "function": {"name": b.name, "arguments": b.input or {}}})
                # redacted_thinking, server tool blocks: nothing a local model can use
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
            if reasoning:
                msg["reasoning_content"] = "\n".join(reasoning)
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
    return out


def _tools(body: MessagesBase) -> list[dict[str, Any]] | None:
    tools = [{"type": "function", "function": {"name": t.name, "description": t.description or "", "parameters": t.input_schema}}
             for t in body.tools or [] if t.input_schema is not None]  # server tools (web search...) have none
    return tools or None


def _spec(body: MessagesBase, sampling: dict[str, Any], max_tokens: int | None) -> ChatSpec:
    spec = ChatSpec(messages=template_messages(body), sampling=sampling, max_tokens=max_tokens, clamp_max_tokens=True,
                    tools=_tools(body), thinking=False)
    if body.tool_choice is not None:
        kind = body.tool_choice.type
        spec.tool_choice = {"auto": "auto", "any": "required", "tool": "named", "none": "none"}[kind]
        spec.tool_name = body.tool_choice.name
        spec.parallel_tool_calls = not body.tool_choice.disable_parallel_tool_use
        if kind == "tool" and not body.tool_choice.name:
            raise bad_request("tool_choice of type `tool` needs a name", "tool_choice")
        if kind in ("any", "tool") and not spec.tools:
            raise bad_request(f"tool_choice `{kind}` needs tools", "tool_choice")
    fmt = (body.output_config or {}).get("format") or body.output_format
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise bad_request("output_config.format needs a `schema` object", "output_config")
        spec.response_schema = fmt["schema"]
    if body.thinking is not None and body.thinking.type in ("enabled", "adaptive"):
        spec.thinking = True
        if body.thinking.type == "enabled" and body.thinking.budget_tokens:
            spec.thinking_budget = body.thinking.budget_tokens
    return spec


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request) -> dict:
    svc = _service(request)
    svc.check_model(body.model)
    spec = _spec(body, {}, None)
    kwargs = {"enable_thinking": bool(spec.thinking)}
    return {"input_tokens": svc.count_tokens(spec.messages, spec.tools if spec.tool_choice != "none" else None, kwargs)}


@router.post("/v1/messages")
async def messages(body: MessagesRequest, request: Request) -> Response:
    svc = _service(request)
    svc.check_model(body.model)
    sampling = {k: v for k, v in (("temperature", body.temperature), ("top_p", body.top_p), ("top_k", body.top_k)) if v is not None}
    sampling["stop"] = [s for s in body.stop_sequences or [] if s]
    gen, _ = await svc.prepare_chat(_spec(body, sampling, body.max_tokens), "anthropic", request.state.request_id)
    handle = svc.loop.submit(gen)
    msg_id = f"msg_{uuid.uuid4().hex[:24]}"
    if body.stream:
        return sse_response(_stream(handle, msg_id, body), [handle])
    try:
        [[st]] = await collect([handle], request)
    except ClientGone:
        return Response(status_code=499)
    reasoning, content, calls = st.final()
    blocks: list[dict[str, Any]] = []
    if reasoning is not None:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if content or not calls:
        blocks.append({"type": "text", "text": content})
    blocks += [{"type": "tool_use", "id": _tool_id(c.id), "name": c.name, "input": json.loads(c.arguments)} for c in calls]
    reason, sequence = _stop_reason(st, bool(calls), body)
    return JSONResponse({"id": msg_id, "type": "message", "role": "assistant", "model": body.model, "content": blocks,
                         "stop_reason": reason, "stop_sequence": sequence, "usage": _usage(handle.prompt_tokens, st)})


def _tool_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def _stop_reason(st: ChoiceState, has_calls: bool, body: MessagesRequest) -> tuple[str, str | None]:
    if st.finish_reason == "length":
        return "max_tokens", None
    if has_calls:
        return "tool_use", None
    if isinstance(st.stop_reason, str) and st.stop_reason in (body.stop_sequences or []):
        return "stop_sequence", st.stop_reason
    return "end_turn", None


def _usage(prompt_tokens: int, st: ChoiceState | None) -> dict[str, int]:
    cached = st.num_cached_tokens if st else 0
    return {"input_tokens": prompt_tokens - cached, "output_tokens": len(st.token_ids) if st else 0,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


async def _stream(handle, msg_id: str, body: MessagesRequest) -> AsyncIterator[str]:
    st = ChoiceState(0, handle.request.parse)
    index, open_kind = -1, None  # the content block being written

    def start(kind: str, block: dict) -> str:
        nonlocal index, open_kind
        index, open_kind = index + 1, kind
        return sse_event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})

    def stop() -> str:
        nonlocal open_kind
        open_kind = None
        return sse_event("content_block_stop", {"type": "content_block_stop", "index": index})

    message = {"id": msg_id, "type": "message", "role": "assistant", "model": body.model, "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {**_usage(handle.prompt_tokens, None), "output_tokens": 0}}
    yield sse_event("message_start", {"type": "message_start", "message": message})
    yield sse_event("ping", {"type": "ping"})
    try:
        async for item in with_heartbeat(merged([handle]), PING_SECONDS):
            if item is None:
                yield sse_event("ping", {"type": "ping"})
                continue
            _, events = st.apply(item[1])
            for kind, value in events:
                if kind == "tool_call":
                    if open_kind is not None:
                        yield stop()
                    yield start("tool_use", {"type": "tool_use", "id": _tool_id(value.id), "name": value.name, "input": {}})
                    yield sse_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                            "delta": {"type": "input_json_delta", "partial_json": value.arguments}})
                    yield stop()
                    continue
                kind = "thinking" if kind == "reasoning" else "text"
                if open_kind != kind:
                    if open_kind is not None:
                        yield stop()
                    yield start(kind, {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else {"type": "text", "text": ""})
                delta = {"type": "thinking_delta", "thinking": value} if kind == "thinking" else {"type": "text_delta", "text": value}
                yield sse_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        if index < 0:  # nothing was generated: still one (empty) text block, as the API always has
            yield start("text", {"type": "text", "text": ""})
        if open_kind is not None:
            yield stop()
        reason, sequence = _stop_reason(st, st.tool_calls_seen > 0, body)
        yield sse_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                                          "usage": _usage(handle.prompt_tokens, st)})
        yield sse_event("message_stop", {"type": "message_stop"})
    except APIError as exc:
        yield sse_event("error", error_body("/v1/messages", exc.status, exc.message))
    finally:
        handle.close()
