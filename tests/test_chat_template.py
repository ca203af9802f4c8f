"""Chat rendering equals transformers' apply_chat_template on the real Qwen3 and Qwen2.5 templates."""

from __future__ import annotations

import copy
import datetime

import pytest
from test_tokenizer import default_gguf, qwen3_tokenizer_dir

from openqwen.tokenizer import CHATML_TEMPLATE, ChatTemplateError, Tokenizer, render_chat
from openqwen.tokenizer.chat_template import compile_template

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Météo actuelle d'une ville — « live » <data> & more",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. 東京"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city"],
        },
    },
}
SEARCH = {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {}}}}


def _call(name: str, arguments: dict) -> dict:
    return {"id": f"call_{name}", "type": "function", "function": {"name": name, "arguments": arguments}}


SYSTEM = {"role": "system", "content": "You are a terse assistant."}
USER = {"role": "user", "content": "What's the weather in Paris and 東京? 🌦️"}
TOOL_TURN = [
    USER,
    {"role": "assistant", "content": "", "tool_calls": [
        _call("get_weather", {"city": "Paris", "unit": "celsius"}),
        _call("get_weather", {"city": "東京", "days": 2, "opts": {"nested": [1, 2.5, None, True]}}),
    ]},
    {"role": "tool", "tool_call_id": "call_get_weather", "content": '{"temp": 18}'},
    {"role": "tool", "tool_call_id": "call_get_weather", "content": "晴れ, 21°C"},
]

# (name, messages, tools, template kwargs)
CONVERSATIONS = [
    ("plain", [{"role": "user", "content": "Hello"}], None, {}),
    ("system", [SYSTEM, {"role": "user", "content": "Hi"}], None, {}),
    ("multi_turn", [SYSTEM, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                    {"role": "user", "content": "times 3?"}], None, {}),
    ("tools", [USER], [WEATHER, SEARCH], {}),
    ("tools_with_system", [SYSTEM, USER], [WEATHER], {}),
    ("tool_calls_and_responses", TOOL_TURN, [WEATHER], {}),
    ("tool_round_trip", [*TOOL_TURN, {"role": "assistant", "content": "Paris 18°C, 東京 21°C."},
                         {"role": "user", "content": "Thanks!"}], [WEATHER], {}),
    ("tool_call_with_content", [USER, {"role": "assistant", "content": "Let me check.",
                                       "tool_calls": [_call("search", {"q": "weather"})]}], [SEARCH], {}),
    ("tool_call_string_arguments", [USER, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "search", "arguments": '{"q": "weather"}'}}]}], [SEARCH], {}),
    ("reasoning_content", [{"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello!", "reasoning_content": "\nGreet back.\n"},
                           {"role": "user", "content": "Bye"}], None, {}),
    ("reasoning_after_last_query", [{"role": "user", "content": "Weather?"},
                                    {"role": "assistant", "content": "", "reasoning": "Need a tool.",
                                     "tool_calls": [_call("search", {"q": "weather"})]},
                                    {"role": "tool", "content": "sunny"}], [SEARCH], {}),
    ("think_in_content", [{"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "<think>\nplan\n</think>\n\nHello!"},
                          {"role": "user", "content": "Again"}], None, {}),
    ("enable_thinking_false", [{"role": "user", "content": "Hi"}], None, {"enable_thinking": False}),
    ("enable_thinking_true", [{"role": "user", "content": "Hi /think"}], None, {"enable_thinking": True}),
    ("no_generation_prompt", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}], None,
     {"add_generation_prompt": False}),
    ("content_none_dropped", [{"role": "user", "content": "Hi", "name": None}], None, {}),
]


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))


@pytest.fixture(scope="module")
def templates(hf) -> dict[str, str]:
    from openqwen.weights.gguf import GGUFFile

    return {"qwen3": hf.chat_template, "qwen2.5": GGUFFile(default_gguf()).metadata["tokenizer.chat_template"]}


def _expected(hf, template: str, messages: list, tools, kwargs: dict) -> str:
    kwargs = {"add_generation_prompt": True, **kwargs}
    return hf.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False, **kwargs)


@pytest.mark.parametrize("template_name", ["qwen3", "qwen2.5"])
@pytest.mark.parametrize("name,messages,tools,kwargs", CONVERSATIONS, ids=[c[0] for c in CONVERSATIONS])
def test_matches_transformers(hf, templates, template_name, name, messages, tools, kwargs) -> None:
    template = templates[template_name]
    before = copy.deepcopy(messages)
    ours = render_chat(template, messages, tools=tools, special_tokens=hf.special_tokens_map, **kwargs)
    assert ours == _expected(hf, template, messages, tools, kwargs)
    assert messages == before  # the caller's messages are not modified


def test_content_none_like_transformers(hf, templates) -> None:
    """None values are dropped as transformers drops them; Qwen3's template then fails on a missing
    assistant `content` (transformers fails too), so API layers should send "" instead of null."""
    messages = [USER, {"role": "assistant", "content": None, "tool_calls": [_call("search", {"q": "x"})]}]
    ours = render_chat(templates["qwen2.5"], messages, tools=[SEARCH], special_tokens=hf.special_tokens_map)
    assert ours == _expected(hf, templates["qwen2.5"], messages, [SEARCH], {})
    with pytest.raises(ChatTemplateError, match="content"):
        render_chat(templates["qwen3"], messages, tools=[SEARCH])
    with pytest.raises(Exception, match="content"):
        _expected(hf, templates["qwen3"], messages, [SEARCH], {})


def test_template_features_visible(templates) -> None:
    """Guard that the cases above exercise what they claim to."""
    qwen3, qwen25 = templates["qwen3"], templates["qwen2.5"]
    assert render_chat(qwen25, [{"role": "user", "content": "Hi"}]).startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud."
    )
    assert render_chat(qwen3, [{"role": "user", "content": "Hi"}], enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    tools_prompt = render_chat(qwen3, [USER], tools=[WEATHER])
    assert '"description": "Météo actuelle d\'une ville — « live » <data> & more"' in tools_prompt
    cases = {c[0]: c[1] for c in CONVERSATIONS}
    past_reasoning = render_chat(qwen3, cases["reasoning_after_last_query"], tools=[SEARCH])
    assert "<think>\nNeed a tool.\n</think>" in past_reasoning


def test_tokenizer_render_chat(hf) -> None:
    tok = Tokenizer.from_dir(qwen3_tokenizer_dir())
    messages = [SYSTEM, {"role": "user", "content": "Hi"}]
    assert tok.render_chat(messages) == _expected(hf, hf.chat_template, messages, None, {})
    assert tok.render_chat(messages, add_generation_prompt=False, enable_thinking=False) == _expected(
        hf, hf.chat_template, messages, None, {"add_generation_prompt": False, "enable_thinking": False}
    )


def test_chatml_fallback_with_text_parts(hf) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Describe "}, {"type": "image"},
                                     {"type": "text", "text": "this."}]},
    ]
    ours = render_chat(None, messages, special_tokens=hf.special_tokens_map)
    assert ours == _expected(hf, CHATML_TEMPLATE, messages, None, {})
    assert ours == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nDescribe this.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_special_tokens_and_kwargs() -> None:
    template = "{{ bos_token }}|{{ eos_token }}|{{ custom }}"
    out = render_chat(template, [], special_tokens={"bos_token": "<s>", "eos_token": "</s>"}, custom=1, eos_token="E")
    assert out == "<s>|E|1"


def test_jinja_environment() -> None:
    assert render_chat("{{ {'b': 'é', 'a': [1, None]} | tojson }}", []) == '{"b": "é", "a": [1, null]}'
    assert render_chat("{{ {'b': 1, 'a': 2} | tojson(indent=2, sort_keys=True) }}", []) == '{\n  "a": 2,\n  "b": 1\n}'
    assert render_chat("{{ strftime_now('%Y') }}", []) == str(datetime.date.today().year)
    assert render_chat("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}",
                       [{"role": "a"}, {"role": "b"}]) == "a"
    # trim_blocks + lstrip_blocks: block tags leave no newline or indentation behind
    assert render_chat("  {% if true %}\nx\n  {% endif %}\n", []) == "x\n"
    assert render_chat("{% generation %}a{% endgeneration %}b", []) == "ab"
    assert compile_template("{{ 1 }}") is compile_template("{{ 1 }}")


def test_raise_exception_becomes_chat_template_error() -> None:
    template = (
        "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user!') }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="^Conversation must start with user!$"):
        render_chat(template, [{"role": "assistant", "content": "x"}])
    assert isinstance(ChatTemplateError("x"), ValueError)


@pytest.mark.parametrize(
    "template",
    [
        "{% if %}",  # does not compile
        "{{ ''.__class__.__mro__ }}",  # sandbox
        "{% set ns = namespace(_private=1) %}",  # namespace names
        "{{ messages[0].content + '!' }}",  # list content into a string template
    ],
)
def test_template_failures_are_chat_template_errors(template: str) -> None:
    with pytest.raises(ChatTemplateError):
        render_chat(template, [{"role": "user", "content": [{"type": "text", "text": "x"}]}])
