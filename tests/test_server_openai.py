"""The official `openai` SDK against a live server (tiny random Qwen3 model): chat, streaming with
usage, n, sampling and seeds, stop, logprobs, tools (forced, named, none, round trip),
json_object / json_schema output that parses and validates, completions and models."""

from __future__ import annotations

import json

import jsonschema
import pytest

openai = pytest.importorskip("openai")

from test_server_support import MODEL_NAME, server  # noqa: E402,F401

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Current time",
                                         "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}}
HI = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_chat_non_streaming_with_usage(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=HI, max_tokens=6, temperature=0)
    choice = r.choices[0]
    assert r.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens == 6 or choice.finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_greedy_and_seeded_sampling_are_reproducible(client):
    def run(**kw):
        return client.chat.completions.create(model=MODEL_NAME, messages=HI, max_tokens=8, **kw).choices[0].message.content

    assert run(temperature=0) == run(temperature=0)
    knobs = dict(temperature=1.0, top_p=0.9, seed=7, presence_penalty=0.5, frequency_penalty=0.5,
                 extra_body={"top_k": 50, "min_p": 0.01, "repetition_penalty": 1.1})
    assert run(**knobs) == run(**knobs)


def test_n_choices_and_max_completion_tokens(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=HI, n=3, max_completion_tokens=4, temperature=1, seed=1)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert r.usage.completion_tokens <= 12


def test_streaming_with_include_usage(client):
    stream = client.chat.completions.create(model=MODEL_NAME, messages=HI, max_tokens=5, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    whole = client.chat.completions.create(model=MODEL_NAME, messages=HI, max_tokens=5, temperature=0)
    assert text == whole.choices[0].message.content


def test_logprobs(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=HI, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 2 and entry.logprob <= 0
        assert entry.logprob >= entry.top_logprobs[0].logprob - 1e-4 or entry.token != entry.top_logprobs[0].token


def test_stop_string_is_honoured(client):
    free = client.chat.completions.create(model=MODEL_NAME, messages=HI, max_tokens=12, temperature=0).choices[0].message.content
    cut = free.strip()[1:4]  # something the greedy reply is known to contain
    r = client.chat.completions.create(model=MODEL_NAME, messages=HI, max_tokens=12, temperature=0, stop=[cut])
    assert cut not in r.choices[0].message.content and r.choices[0].finish_reason == "stop"


def test_forced_tool_call_round_trip(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                       tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False,
                                       max_tokens=60, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name in ("get_weather", "get_time") and call.id
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    follow = client.chat.completions.create(model=MODEL_NAME, max_tokens=5, tools=[WEATHER, TIME], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
    ])
    assert follow.choices[0].message.role == "assistant"


def test_named_tool_choice_and_streamed_tool_call(client):
    stream = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Weather?"}], stream=True,
                                            tools=[WEATHER, TIME], max_tokens=60, temperature=0.8, seed=3,
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}})
    calls, finish = {}, None
    for chunk in stream:
        for tc in chunk.choices[0].delta.tool_calls or []:
            calls.setdefault(tc.index, tc)
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and [c.function.name for c in calls.values()] == ["get_weather"]
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER["function"]["parameters"])


def test_tool_choice_none_gives_text(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=HI, tools=[WEATHER], tool_choice="none", max_tokens=4)
    assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_parses_and_validates(client, stream):
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "age", "color"],
              "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                             "color": {"enum": ["red", "green", "blue"]}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
    kwargs = dict(model=MODEL_NAME, messages=[{"role": "user", "content": "A person as JSON"}], response_format=fmt,
                  max_tokens=80, temperature=1.0, seed=11)
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs) if c.choices)
    else:
        text = client.chat.completions.create(**kwargs).choices[0].message.content
    jsonschema.validate(json.loads(text), schema)


def test_json_object_mode(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "JSON please"}], n=2,
                                       response_format={"type": "json_object"}, max_tokens=60, temperature=0.7, seed=5,
                                       extra_body={"logit_bias": {"90": -100}})
    for choice in r.choices:
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
        else:
            assert choice.message.content.startswith("{")


def test_content_parts_system_and_developer_roles(client):
    r = client.chat.completions.create(model=MODEL_NAME, max_tokens=3, messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Hi", "reasoning_content": "greeting"},
        {"role": "user", "content": "Again"},
    ], extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert r.choices[0].message.content is not None


def test_completions_text_ids_echo_logprobs(client):
    r = client.completions.create(model=MODEL_NAME, prompt=["def add(a, b):", "Once upon"], max_tokens=3, temperature=0,
                                  echo=True, logprobs=2)
    assert [c.index for c in r.choices] == [0, 1]
    first = r.choices[0]
    assert first.text.startswith("def add(a, b):")
    assert first.logprobs.token_logprobs[0] is None and len(first.logprobs.tokens) == len(first.logprobs.text_offset)
    ids = client.completions.create(model=MODEL_NAME, prompt=[1, 2, 3], max_tokens=2, temperature=0)
    assert ids.usage.prompt_tokens == 3 and ids.usage.completion_tokens == 2
    parts = list(client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=3, temperature=0, stream=True))
    whole = client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=3, temperature=0)
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text


def test_sdk_errors(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=HI)
    assert "no-such-model" in info.value.message
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model=MODEL_NAME, messages=HI, max_tokens=10**7)
    with pytest.raises(openai.BadRequestError, match="vision"):
        client.chat.completions.create(model=MODEL_NAME, max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
