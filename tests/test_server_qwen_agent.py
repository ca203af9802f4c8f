"""Qwen-Agent (PyPI `qwen-agent`, which imports `soundfile` without declaring it) against the live
server: its function-calling flow through the API's tools (`use_raw_api`), with the tiny model
forced to call the tool by tool_choice, and its own text-prompted (nous) flow."""

from __future__ import annotations

import json

import jsonschema
import pytest

pytest.importorskip("soundfile")
llm_module = pytest.importorskip("qwen_agent.llm")

from test_server_support import MODEL_NAME, server  # noqa: E402,F401

WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
                          "required": ["city"], "additionalProperties": False}}


def _llm(server, **generate_cfg):
    return llm_module.get_chat_model({"model": MODEL_NAME, "model_server": server.url + "/v1", "api_key": "unused",
                                      "generate_cfg": {"max_tokens": 40, "temperature": 0, **generate_cfg}})


def _last(stream):
    responses = None
    for responses in stream:
        pass
    return responses


def test_function_calling_round_trip_through_the_api(server):
    llm = _llm(server, use_raw_api=True, tool_choice="required", parallel_tool_calls=False)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    responses = _last(llm.chat(messages=messages, functions=[WEATHER], stream=True))
    calls = [m for m in responses if m.get("function_call")]
    assert len(calls) == 1 and calls[0]["function_call"]["name"] == "get_weather"
    arguments = json.loads(calls[0]["function_call"]["arguments"])
    jsonschema.validate(arguments, WEATHER["parameters"])
    messages += responses
    messages.append({"role": "function", "name": "get_weather", "content": json.dumps({"city": arguments["city"], "celsius": 21}),
                     "extra": {"function_id": calls[0]["extra"]["function_id"]}})
    final = _last(llm.chat(messages=messages, functions=[WEATHER], stream=True, extra_generate_cfg={"tool_choice": "none"}))
    assert final and final[-1]["role"] == "assistant" and not final[-1].get("function_call")


def test_text_prompted_function_calling_flow(server):
    """Qwen-Agent writes the tool instructions into the prompt itself and parses `<tool_call>` from
    the reply text; the server passes both through untouched."""
    llm = _llm(server)
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"role": "function", "name": "get_weather", "content": '{"celsius": 21}'}]
    final = _last(llm.chat(messages=messages, functions=[WEATHER], stream=True))
    assert final and final[-1]["role"] == "assistant"
    plain = llm.chat(messages=[{"role": "user", "content": "hi"}], stream=False)
    assert plain[-1]["role"] == "assistant" and isinstance(plain[-1]["content"], str)
