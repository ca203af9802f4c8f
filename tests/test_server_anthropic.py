"""The official `anthropic` SDK against a live server (tiny random Qwen3 model): messages, the full
streaming event sequence, tool_use / tool_result round trip, tool_choice, thinking with a budget,
stop sequences, count_tokens, headers and query strings Claude Code sends, and errors."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

anthropic = pytest.importorskip("anthropic")

from test_server_support import MODEL_NAME, server  # noqa: E402,F401

WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                            "required": ["city"], "additionalProperties": False}}
HI = [{"role": "user", "content": "Say hi"}]
GREEDY = {"temperature": 0}  # SDK 2.x dropped sampling arguments from create(): they go in extra_body


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def test_message_non_streaming(client):
    m = client.messages.create(model=MODEL_NAME, max_tokens=6, messages=HI, system="Be brief.", extra_body=GREEDY)
    assert m.type == "message" and m.role == "assistant" and m.content[0].type == "text"
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert m.usage.input_tokens > 0 and 1 <= m.usage.output_tokens <= 6


def test_streaming_event_sequence_matches_non_streaming(client):
    kwargs = dict(model=MODEL_NAME, max_tokens=6, messages=HI, extra_body={"temperature": 0, "top_k": 5, "top_p": 0.9})
    with client.messages.stream(**kwargs) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"} <= set(events)
    whole = client.messages.create(**kwargs)
    assert final.content[0].text == whole.content[0].text and final.stop_reason == whole.stop_reason


def test_raw_stream_has_ping_and_usage(server):
    body = {"model": MODEL_NAME, "max_tokens": 3, "stream": True, "messages": HI}
    with httpx.stream("POST", server.url + "/v1/messages?beta=true", json=body, timeout=60,
                      headers={"x-api-key": "k", "anthropic-version": "2023-06-01", "anthropic-beta": "fine-grained-tool-streaming-2025-05-14"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line.startswith("event:")]
    names = [line.split(": ", 1)[1] for line in lines]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]


def test_stop_sequences(client):
    free = client.messages.create(model=MODEL_NAME, max_tokens=12, messages=HI, extra_body=GREEDY).content[0].text
    cut = free.strip()[1:4]
    m = client.messages.create(model=MODEL_NAME, max_tokens=12, messages=HI, extra_body=GREEDY, stop_sequences=[cut])
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == cut and cut not in m.content[0].text


def test_forced_tool_use_round_trip(client):
    m = client.messages.create(model=MODEL_NAME, max_tokens=60, extra_body=GREEDY, tools=[WEATHER],
                               tool_choice={"type": "tool", "name": "get_weather"},
                               messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert m.stop_reason == "tool_use"
    use = next(b for b in m.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.id.startswith("toolu_")
    jsonschema.validate(use.input, WEATHER["input_schema"])
    follow = client.messages.create(model=MODEL_NAME, max_tokens=5, tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me check."}, use.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": [{"type": "text", "text": "21 C"}]},
                                     {"type": "text", "text": "Thanks", "cache_control": {"type": "ephemeral"}}]},
    ])
    assert follow.role == "assistant"


def test_streamed_tool_use_any(client):
    with client.messages.stream(model=MODEL_NAME, max_tokens=60, extra_body={"temperature": 0.5}, tools=[WEATHER],
                                tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                messages=[{"role": "user", "content": "Weather?"}]) as stream:
        kinds = [(e.type, getattr(getattr(e, "delta", None), "type", None)) for e in stream]
        final = stream.get_final_message()
    assert ("content_block_delta", "input_json_delta") in kinds
    assert final.stop_reason == "tool_use"
    jsonschema.validate(next(b for b in final.content if b.type == "tool_use").input, WEATHER["input_schema"])


def test_thinking_budget_yields_thinking_then_text(client):
    m = client.messages.create(model=MODEL_NAME, max_tokens=14, extra_body=GREEDY, messages=HI,
                               thinking={"type": "enabled", "budget_tokens": 5})
    kinds = [b.type for b in m.content]
    assert kinds[0] == "thinking" and m.content[0].thinking
    assert len(m.content) == 1 or kinds[1] == "text"
    with client.messages.stream(model=MODEL_NAME, max_tokens=14, extra_body=GREEDY, messages=HI,
                                thinking={"type": "enabled", "budget_tokens": 5}) as stream:
        deltas = {getattr(e.delta, "type", None) for e in stream if e.type == "content_block_delta"}
        final = stream.get_final_message()
    assert "thinking_delta" in deltas and final.content[0].thinking == m.content[0].thinking


def test_thinking_history_and_system_blocks(client):
    m = client.messages.create(model=MODEL_NAME, max_tokens=3, system=[{"type": "text", "text": "You are terse."}], messages=[
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "they greet", "signature": "x"},
                                          {"type": "redacted_thinking", "data": "abc"}, {"type": "text", "text": "Hello"}]},
        {"role": "system", "content": [{"type": "text", "text": "Environment: a test."}]},  # as Claude Code 2.x sends
        {"role": "user", "content": [{"type": "text", "text": "Bye"}]},
    ])
    assert m.content


def test_count_tokens_matches_usage(client):
    counted = client.messages.count_tokens(model=MODEL_NAME, messages=HI, system="Be brief.", tools=[WEATHER])
    used = client.messages.create(model=MODEL_NAME, max_tokens=1, messages=HI, system="Be brief.", tools=[WEATHER])
    assert counted.input_tokens == used.usage.input_tokens + used.usage.cache_read_input_tokens


def test_errors_in_anthropic_shape(client, server):
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="claude-nope", max_tokens=5, messages=HI)
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError, match="vision"):
        client.messages.create(model=MODEL_NAME, max_tokens=5, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}])
    r = httpx.post(server.url + "/v1/messages", json={"model": MODEL_NAME, "messages": HI}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error" and "max_tokens" in r.json()["error"]["message"]


def test_unknown_fields_like_claude_code_are_accepted(server):
    body = {"model": MODEL_NAME, "max_tokens": 3, "messages": HI, "metadata": {"user_id": "u"}, "context_management": {"edits": []},
            "output_config": {"effort": "low"}, "thinking": {"type": "adaptive"}, "stream": False,
            "tools": [WEATHER, {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
            "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}
    r = httpx.post(server.url + "/v1/messages?beta=true", json=body, timeout=60,
                   headers={"authorization": "Bearer x", "anthropic-version": "2023-06-01", "anthropic-beta": "interleaved-thinking-2025-05-14,context-management-2025-06-27"})
    assert r.status_code == 200, r.text
    assert r.headers["request-id"]


def test_structured_output_via_output_config(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
    m = client.messages.create(model=MODEL_NAME, max_tokens=20, messages=[{"role": "user", "content": "JSON"}],
                               extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}})
    jsonschema.validate(json.loads(m.content[0].text), schema)
