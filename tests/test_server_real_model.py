"""The real default model (Qwen2.5-Coder-0.5B-Instruct GGUF) behind `openqwen serve`, driven by the
official openai and anthropic SDKs and Qwen-Agent. Marked slow: a 0.5 GB model on the CPU."""

from __future__ import annotations

import json

import jsonschema
import pytest

from openqwen.registry import DEFAULT_MODEL, ModelUnavailableError, resolve_model
from test_server_support import ServerProcess

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

NAME = "qwen-coder"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


@pytest.fixture(scope="module")
def real_server():
    try:
        resolve_model(DEFAULT_MODEL)
    except ModelUnavailableError as exc:
        pytest.skip(f"default model not installed: {exc}")
    server = ServerProcess("--max-model-len", "8192", model=DEFAULT_MODEL, name=NAME)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oai(real_server):
    return openai.OpenAI(base_url=real_server.url + "/v1", api_key="unused", max_retries=0, timeout=600)


def test_chat_writes_code_and_streams_the_same_text(oai):
    messages = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
    r = oai.chat.completions.create(model=NAME, messages=messages, max_tokens=60, temperature=0)
    assert "def " in r.choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in oai.chat.completions.create(
        model=NAME, messages=messages, max_tokens=60, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].message.content


@pytest.mark.parametrize("tool_choice", ["auto", "required"])
def test_tool_round_trip(oai, tool_choice):
    """auto: this 0.5B model writes the call as a bare ```json block (taken as a call); required:
    the grammar makes it write a proper <tool_call>."""
    messages = [{"role": "user", "content": "What's the weather like in Paris right now?"}]
    r = oai.chat.completions.create(model=NAME, messages=messages, tools=[WEATHER], tool_choice=tool_choice,
                                    parallel_tool_calls=False, max_tokens=60, temperature=0)
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and "paris" in json.loads(call.function.arguments)["city"].lower()
    messages += [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": 21, "sky": "sunny"})}]
    answer = oai.chat.completions.create(model=NAME, messages=messages, tools=[WEATHER], max_tokens=60, temperature=0)
    assert "21" in answer.choices[0].message.content


def test_json_schema_output(oai):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "year": {"type": "integer"}},
              "required": ["name", "year"], "additionalProperties": False}
    r = oai.chat.completions.create(model=NAME, max_tokens=60, temperature=0, messages=[
        {"role": "user", "content": "Who created Python, and in which year? Answer as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)  # what it says is up to a 0.5B model


def test_anthropic_stream_and_count_tokens(real_server):
    client = anthropic.Anthropic(base_url=real_server.url, api_key="unused", max_retries=0, timeout=600)
    messages = [{"role": "user", "content": "Say hello in French, in one short sentence."}]
    with client.messages.stream(model=NAME, max_tokens=40, messages=messages, extra_body={"temperature": 0}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "bonjour" in text.lower() and final.stop_reason == "end_turn"
    counted = client.messages.count_tokens(model=NAME, messages=messages)
    assert counted.input_tokens == final.usage.input_tokens + final.usage.cache_read_input_tokens


def _last(stream):
    responses = None
    for responses in stream:
        pass
    return responses


def test_qwen_agent_function_calling_flow(real_server):
    """Qwen-Agent with the API's tools: the model asks for the weather, Qwen-Agent's caller runs the
    function, the model answers with its result."""
    pytest.importorskip("soundfile")
    from qwen_agent.llm import get_chat_model

    llm = get_chat_model({"model": NAME, "model_server": real_server.url + "/v1", "api_key": "unused",
                          "generate_cfg": {"max_tokens": 80, "temperature": 0, "use_raw_api": True}})
    messages = [{"role": "user", "content": "What's the weather like in Paris right now?"}]
    responses = _last(llm.chat(messages=messages, functions=[WEATHER["function"]], stream=True))
    calls = [m for m in responses if m.get("function_call")]
    assert calls and calls[0]["function_call"]["name"] == "get_weather", responses
    messages += responses
    messages.append({"role": "function", "name": "get_weather", "content": json.dumps({"celsius": 21, "sky": "sunny"}),
                     "extra": {"function_id": calls[0]["extra"]["function_id"]}})
    final = _last(llm.chat(messages=messages, functions=[WEATHER["function"]], stream=True))
    assert "21" in final[-1]["content"], final


def test_qwen_agent_text_prompted_flow(real_server):
    """Qwen-Agent's own prompt (tools described in text, calls parsed from the reply): the request
    and reply pass through; this 0.5B model answers with bare JSON, which Qwen-Agent does not parse,
    so only the intent is checked."""
    pytest.importorskip("soundfile")
    from qwen_agent.llm import get_chat_model

    llm = get_chat_model({"model": NAME, "model_server": real_server.url + "/v1", "api_key": "unused",
                          "generate_cfg": {"max_tokens": 80, "temperature": 0}})
    responses = _last(llm.chat(messages=[{"role": "user", "content": "What's the weather like in Paris?"}],
                               functions=[WEATHER["function"]], stream=True))
    text = json.dumps(responses)
    assert "get_weather" in text and "Paris" in text, responses
