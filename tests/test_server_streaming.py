"""Stream translation without a model: scripted engine updates (reasoning, text, two tool calls in
one turn) through the OpenAI chunk and Anthropic event writers, checked field by field."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")

from openqwen.engine.sampling_params import SamplingParams  # noqa: E402
from openqwen.server import anthropic_api, openai_api  # noqa: E402
from openqwen.server.generation import ChoiceUpdate, GenerationRequest, ParseOptions  # noqa: E402
from openqwen.server.protocol_anthropic import MessagesRequest  # noqa: E402
from openqwen.server.protocol_openai import ChatCompletionRequest  # noqa: E402

TOOLS = [{"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}},
         {"type": "function", "function": {"name": "b", "parameters": {"type": "object"}}}]
REPLY = ('<think>\nplan it\n</think>\n\nSure, calling both.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
         '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>')


class FakeHandle:
    """Plays a reply back three characters per 'engine step', like RequestHandle does."""

    def __init__(self, text: str, finish: str = "stop", tools=TOOLS, bare: bool = False) -> None:
        parse = ParseOptions(starts_in_reasoning=False, tools=tools, detect_tool_calls=bool(tools), bare_json_calls=bare)
        self.request = GenerationRequest("req-test", [1, 2, 3], SamplingParams(max_tokens=100), parse)
        self.prompt_tokens, self.text, self.finish, self.closed = 3, text, finish, False

    async def __aiter__(self):
        pieces = range(3, len(self.text) + 3, 3)
        for i, end in enumerate(pieces):
            last = i == len(pieces) - 1
            yield ChoiceUpdate(0, self.text[:end], [i], None, self.finish if last else None, None)

    def close(self) -> None:
        self.closed = True


async def _drain(agen) -> list[str]:
    return [item async for item in agen]


def _sse_payloads(frames: list[str]) -> list[tuple[str | None, object]]:
    out = []
    for frame in frames:
        event, data = None, None
        for line in frame.strip().splitlines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        out.append((event, data if data == "[DONE]" else json.loads(data)))
    return out


def test_openai_chunks_carry_reasoning_content_and_two_tool_calls():
    handle = FakeHandle(REPLY)
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    svc = SimpleNamespace(tokenizer=None)
    frames = asyncio.run(_drain(openai_api._stream(svc, handle, "chatcmpl-1", 0, body, include_usage=True)))
    payloads = [p for _, p in _sse_payloads(frames)]
    assert payloads[-1] == "[DONE]" and payloads[-2]["choices"] == [] and payloads[-2]["usage"]["completion_tokens"] > 0
    deltas = [p["choices"][0]["delta"] for p in payloads[:-2]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "plan it"
    assert "".join(d.get("content", "") for d in deltas) == "Sure, calling both."
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert [(c["index"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [(0, "a", {"x": 1}), (1, "b", {})]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert payloads[-3]["choices"][0]["finish_reason"] == "tool_calls"
    assert handle.closed


def test_anthropic_events_thinking_text_and_tool_use_blocks():
    handle = FakeHandle(REPLY)
    body = MessagesRequest(model="m", max_tokens=100, messages=[{"role": "user", "content": "x"}], stream=True)
    events = _sse_payloads(asyncio.run(_drain(anthropic_api._stream(handle, "msg_1", body))))
    names = [e for e, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    blocks: dict[int, dict] = {}
    for name, data in events:
        if name == "content_block_start":
            blocks[data["index"]] = {"block": data["content_block"], "deltas": [], "stopped": False}
        elif name == "content_block_delta":
            blocks[data["index"]]["deltas"].append(data["delta"])
        elif name == "content_block_stop":
            blocks[data["index"]]["stopped"] = True
    assert [b["block"]["type"] for b in blocks.values()] == ["thinking", "text", "tool_use", "tool_use"]
    assert all(b["stopped"] for b in blocks.values())
    assert "".join(d["thinking"] for d in blocks[0]["deltas"]) == "plan it"
    assert "".join(d["text"] for d in blocks[1]["deltas"]) == "Sure, calling both."
    assert [(blocks[i]["block"]["name"], json.loads("".join(d["partial_json"] for d in blocks[i]["deltas"]))) for i in (2, 3)] == \
        [("a", {"x": 1}), ("b", {})]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_anthropic_empty_reply_still_has_a_text_block_and_max_tokens():
    handle = FakeHandle("", finish="length", tools=None)
    handle.text = "x"
    body = MessagesRequest(model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}], stream=True)
    events = _sse_payloads(asyncio.run(_drain(anthropic_api._stream(handle, "msg_1", body))))
    starts = [d["content_block"]["type"] for e, d in events if e == "content_block_start"]
    assert starts == ["text"] and events[-2][1]["delta"]["stop_reason"] == "max_tokens"


@pytest.mark.parametrize("reply, call", [
    ('```json\n{\n  "name": "a",\n  "arguments": {"x": 2}\n}\n```', ("a", {"x": 2})),
    ('{"name": "unknown", "arguments": {}}', None),
])
def test_bare_json_tool_call_fallback_when_streaming(reply, call):
    """ParseOptions.bare_json_calls reaches the stream: a bare call's JSON becomes a tool-call
    chunk, anything else streams as text unchanged (the cases: tests/test_parsers.py)."""
    handle = FakeHandle(reply, bare=True)
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    frames = asyncio.run(_drain(openai_api._stream(SimpleNamespace(tokenizer=None), handle, "c", 0, body, include_usage=False)))
    deltas = [p["choices"][0]["delta"] for _, p in _sse_payloads(frames)[:-1]]
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    text = "".join(d.get("content") or "" for d in deltas)
    if call is None:
        assert not calls and text == reply
    else:
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [call] and text == ""


def test_engine_loop_call_returns_results_and_errors():
    """Work run in the engine thread (prompt scoring) hands back its result or its exception."""
    from openqwen.server.engine_loop import EngineLoop

    engine = SimpleNamespace(scheduler=SimpleNamespace(max_num_seqs=1, num_running=0, num_waiting=0), has_unfinished=lambda: False,
                             block_manager=SimpleNamespace(num_blocks=4, num_free_blocks=4, usage=0.0))
    loop = EngineLoop(engine, max_queue=0)
    loop.start()

    async def main():
        assert await loop.call(lambda e: e.block_manager.num_blocks) == 4
        with pytest.raises(ZeroDivisionError):
            await loop.call(lambda e: 1 / 0)

    try:
        asyncio.run(main())
    finally:
        loop.stop()
    assert not loop.is_alive()
