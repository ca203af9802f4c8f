"""Reasoning / tool-call parsing of model output: whole texts, malformed input, bare JSON calls,
streamed deltas."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openqwen.tokenizer import (
    StreamParser,
    ToolCall,
    bare_json_tool_call,
    parse_reply,
    parse_tool_calls,
    prompt_opens_reasoning,
    split_reasoning,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "edit",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "line": {"type": "integer"},
                    "scale": {"type": "number"},
                    "dry_run": {"type": "boolean"},
                    "options": {"type": "object"},
                    "tags": {"type": "array"},
                    "limit": {"type": ["integer", "null"]},
                    "nothing": {"type": "null"},
                },
            },
        },
    },
    {"name": "bare", "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}}},
]


def hermes(name: str, arguments: object) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n</tool_call>"


def xml(name: str, **params: str) -> str:
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def args(call: ToolCall) -> dict:
    return json.loads(call.arguments)


# -- reasoning ------------------------------------------------------------------------------------


def test_reasoning_with_opening_tag() -> None:
    text = "<think>\nLet me think.\nStep 2.\n</think>\n\nThe answer is 4."
    assert split_reasoning(text, starts_in_reasoning=False) == ("Let me think.\nStep 2.", "The answer is 4.")
    assert split_reasoning("\n<think>a</think>b", starts_in_reasoning=False) == ("a", "b")
    assert split_reasoning("<think>\n\n</think>\n\nHi", starts_in_reasoning=False) == ("", "Hi")


def test_reasoning_opened_by_prompt() -> None:
    assert split_reasoning("plan\n</think>\n\nanswer", starts_in_reasoning=True) == ("plan", "answer")
    # split at the LAST </think>, as Qwen's model cards do
    assert split_reasoning("a</think>b</think>\nc", starts_in_reasoning=True) == ("a</think>b", "c")
    assert split_reasoning("cut off mid-thought\n", starts_in_reasoning=True) == ("cut off mid-thought", "")


def test_no_reasoning() -> None:
    for text in ["Just an answer.", "  spaced\n", "", "x <think>y</think> z", "</think> stray"]:
        assert split_reasoning(text, starts_in_reasoning=False) == (None, text)
    assert split_reasoning("<think>unfinished", starts_in_reasoning=False) == ("unfinished", "")


def test_prompt_opens_reasoning() -> None:
    head = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert prompt_opens_reasoning(head + "<think>\n")
    assert not prompt_opens_reasoning(head)
    assert not prompt_opens_reasoning(head + "<think>\n\n</think>\n\n")  # Qwen3 enable_thinking=False
    assert not prompt_opens_reasoning("<|im_start|>user\nwhat is <think>?<|im_end|>\n<|im_start|>assistant\n")
    past = "<|im_start|>assistant\n<think>\nold\n</think>\n\nx<|im_end|>\n"
    assert prompt_opens_reasoning(past + "<|im_start|>assistant\n<think>\n")


# -- tool calls -----------------------------------------------------------------------------------


def test_hermes_single() -> None:
    content, calls = parse_tool_calls(hermes("get_weather", {"city": "東京", "days": 2}))
    assert content == "" and [(c.name, args(c)) for c in calls] == [("get_weather", {"city": "東京", "days": 2})]
    assert calls[0].arguments == '{"city": "東京", "days": 2}'  # JSON text, non-ASCII kept
    assert calls[0].id.startswith("call_") and len(calls[0].id) == 29


def test_hermes_several_with_text() -> None:
    text = "Let me check both.\n\n" + hermes("a", {"x": 1}) + "\n" + hermes("b", {}) + "\n\nDone? "
    content, calls = parse_tool_calls(text)
    assert content == "Let me check both.\nDone? "
    assert [(c.name, args(c)) for c in calls] == [("a", {"x": 1}), ("b", {})]
    assert len({c.id for c in calls}) == 2


def test_hermes_string_encoded_arguments() -> None:
    _, calls = parse_tool_calls(hermes("f", json.dumps({"q": "a \"quoted\" word"})))
    assert args(calls[0]) == {"q": 'a "quoted" word'}
    text = '<tool_call>{"name": "f"}</tool_call><tool_call>{"name": "g", "parameters": {"k": 1}}</tool_call>'
    _, calls = parse_tool_calls(text)
    assert [(c.name, args(c)) for c in calls] == [("f", {}), ("g", {"k": 1})]


def test_qwen3_coder_typed_values() -> None:
    text = xml(
        "edit",
        path="src/main.py",
        line="42",
        scale="2.5",
        dry_run="True",
        options='{"indent": 4, "eol": "\\n"}',
        tags='["a", "b"]',
        limit="null",
        nothing="null",
        extra="7",
    )
    _, calls = parse_tool_calls(text, TOOLS)
    assert calls[0].name == "edit"
    assert args(calls[0]) == {
        "path": "src/main.py", "line": 42, "scale": 2.5, "dry_run": True, "options": {"indent": 4, "eol": "\n"},
        "tags": ["a", "b"], "limit": None, "nothing": None, "extra": "7",
    }


def test_qwen3_coder_values_that_do_not_fit_stay_strings() -> None:
    text = xml("edit", line="forty", scale="1e999", dry_run="yes", options="{broken", tags='{"a": 1}', path="null")
    _, calls = parse_tool_calls(text, TOOLS)
    assert args(calls[0]) == {
        "line": "forty", "scale": "1e999", "dry_run": "yes", "options": "{broken", "tags": '{"a": 1}', "path": "null",
    }
    _, calls = parse_tool_calls(xml("edit", line="42", scale="3.0"), TOOLS)
    assert args(calls[0]) == {"line": 42, "scale": 3}
    _, calls = parse_tool_calls(xml("bare", n="5"), TOOLS)  # bare schema form
    assert args(calls[0]) == {"n": 5}
    _, calls = parse_tool_calls(xml("edit", line="42"))  # no tools: strings
    assert args(calls[0]) == {"line": "42"}
    odd_tools = [None, {"function": "edit"}, {"name": "edit", "parameters": [1]}]
    assert args(parse_tool_calls(xml("edit", line="42"), odd_tools)[1][0]) == {"line": "42"}


def test_qwen3_coder_value_whitespace() -> None:
    code = "\n\ndef f():\n    return 1\n\n"
    _, calls = parse_tool_calls(xml("write", content=code))
    assert args(calls[0]) == {"content": code}  # exactly one newline stripped at each end
    compact = "<tool_call><function=f><parameter=a>1</parameter><parameter=b> x </parameter></function></tool_call>"
    assert args(parse_tool_calls(compact)[1][0]) == {"a": "1", "b": " x "}


def test_qwen3_coder_lenient_forms() -> None:
    unclosed_params = "<tool_call>\n<function=f>\n<parameter=a>\n1\n<parameter=b>\n2\n</function>\n</tool_call>"
    assert args(parse_tool_calls(unclosed_params)[1][0]) == {"a": "1", "b": "2"}
    two = (
        "<tool_call>\n<function=f>\n</function>\n"
        "<function=g>\n<parameter=x>\ny\n</parameter>\n</function>\n</tool_call>"
    )
    assert [(c.name, args(c)) for c in parse_tool_calls(two)[1]] == [("f", {}), ("g", {"x": "y"})]


MALFORMED = [
    "<tool_call>{bad json}</tool_call>",
    '<tool_call>\n{"name": 1, "arguments": {}}\n</tool_call>',
    "<tool_call>[1, 2]</tool_call>",
    '<tool_call>{"name": "f", "arguments": "not json"}</tool_call>',
    '<tool_call>{"name": "f", "arguments": [1]}</tool_call>',
    '<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>',
    '<tool_call>{"name": "f", "arguments": {"x": 1e999}}</tool_call>',
    '<tool_call>\n{"name": "f", "arguments": {}}',  # never closed
    '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call',
    "</tool_call> a stray close",
    "<tool_call></tool_call>",
    "<function=f>\n<parameter=a>\n1\n</parameter>\n</function>",  # no <tool_call> around it
    "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</tool_call>",  # no </function>
    "<tool_call>\n<function=f></function> junk <function=g></function>\n</tool_call>",
    "<tool_call>\n<function=f></function>\ntrailing junk\n</tool_call>",
    '<tool_call> {"name": "f"} {"name": "g"} </tool_call>',
    "<tool_call>" + "[" * 100_000 + "</tool_call>",
    '<tool_call>{"name": "f", "arguments": ' + "1" * 5000 + "}</tool_call>",
    "<tool_call><tool_call></tool_call>",
    "<<tool_call>>{}<</tool_call>>",
]


@pytest.mark.parametrize("text", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_stays_content(text: str) -> None:
    assert parse_tool_calls(text, TOOLS) == (text, [])
    assert _streamed(text, [len(text) // 3, len(text) // 2], tools=TOOLS) == (None, text, [])


def test_bad_block_between_good_ones() -> None:
    text = hermes("a", {}) + "<tool_call>oops</tool_call>" + hermes("b", {})
    content, calls = parse_tool_calls(text)
    assert content == "<tool_call>oops</tool_call>" and [c.name for c in calls] == ["a", "b"]


# -- bare JSON calls (small models skip the <tool_call> tags) ----------------------------------------

BARE_REPLIES = [
    ('```json\n{\n  "name": "edit",\n  "arguments": {"line": 2}\n}\n```', ("edit", {"line": 2})),
    ('  {"name": "bare", "arguments": {}}\n', ("bare", {})),
    ('```json \n\n{"name": "edit", "parameters": {"path": "a"}}\n```', ("edit", {"path": "a"})),
    ('```\n{"name": "edit", "arguments": "{\\"line\\": 1}"}\n```', ("edit", {"line": 1})),
    ('{"name": "unknown", "arguments": {}}', None),  # not one of the tools
    ('{"answer": 42}', None),  # JSON, but not a call
    ('{"name": "edit", "arguments": {}} {"name": "bare", "arguments": {}}', None),  # two objects
    ('Sure: {"name": "edit", "arguments": {}}', None),  # words around it
    ('```json\n{"name": "edit", "arguments": {}}', None),  # fence never closed
    ("```python\nprint(1)\n```", None),
    ("Plain words.", None),
]


@pytest.mark.parametrize("reply, call", BARE_REPLIES, ids=range(len(BARE_REPLIES)))
def test_bare_json_tool_call(reply: str, call) -> None:
    found = bare_json_tool_call(reply, TOOLS)
    assert (found.name, args(found)) == call if call else found is None
    assert bare_json_tool_call(reply, None) is None  # no tools, no call
    expected = (None, "", [found]) if call else (None, reply, [])
    assert parse_reply(reply, starts_in_reasoning=False, tools=TOOLS, bare_json_calls=True) == expected
    assert parse_reply(reply, starts_in_reasoning=False, tools=TOOLS) == (None, reply, [])  # only when asked
    for cuts in ([], [1], [5, 9], list(range(1, len(reply)))):
        assert _streamed(reply, cuts, tools=TOOLS, bare_json_calls=True) == expected


def test_bare_call_after_reasoning_and_not_beside_a_tagged_call() -> None:
    text = '<think>\nplan\n</think>\n\n{"name": "edit", "arguments": {"line": 1}}'
    reasoning, content, calls = parse_reply(text, starts_in_reasoning=False, tools=TOOLS, bare_json_calls=True)
    assert (reasoning, content, [(c.name, args(c)) for c in calls]) == ("plan", "", [("edit", {"line": 1})])
    text = '{"name": "edit", "arguments": {}}\n' + hermes("bare", {})  # a tagged call: the JSON stays text
    reasoning, content, calls = parse_reply(text, starts_in_reasoning=False, tools=TOOLS, bare_json_calls=True)
    assert content == '{"name": "edit", "arguments": {}}' and [c.name for c in calls] == ["bare"]
    assert _streamed(text, [7, 30], tools=TOOLS, bare_json_calls=True) == (reasoning, content, calls)


def test_llm_chat_takes_bare_calls_when_tools_were_given() -> None:
    from openqwen import LLM

    reply = '{"name": "edit", "arguments": {"line": 1}}'
    completion = SimpleNamespace(text=reply)
    LLM.parse_reply(completion, "<|im_start|>assistant\n", TOOLS)
    assert completion.text == "" and [(c.name, args(c)) for c in completion.tool_calls] == [("edit", {"line": 1})]
    completion = SimpleNamespace(text=reply)
    LLM.parse_reply(completion, "<|im_start|>assistant\n", None)
    assert completion.text == reply and completion.tool_calls == []


def test_stream_holds_content_only_while_it_may_be_a_bare_call() -> None:
    parser = StreamParser(tools=TOOLS, bare_json_calls=True)
    assert parser.feed("``") == [] and parser.feed("`js") == []
    assert parser.feed("on\n{") == [] and parser.feed('"name": "edit"}\n') == []
    assert parser.feed("``") == [] and [(k, v.name) for k, v in parser.feed("`") + parser.finish()] == [("tool_call", "edit")]
    parser = StreamParser(tools=TOOLS, bare_json_calls=True)
    assert parser.feed("```py") == [("content", "```py")]  # cannot become a call: streams at once
    assert parser.feed("thon\n") == [("content", "thon")]  # (a trailing newline waits, as always)


# -- streaming ------------------------------------------------------------------------------------


def _streamed(text: str, cuts: list[int], starts_in_reasoning: bool = False, tools=None, bare_json_calls: bool = False):
    """Feed `text` cut at `cuts`; returns (reasoning or None, content, calls) from the joined events."""
    parser = StreamParser(starts_in_reasoning=starts_in_reasoning, tools=tools, bare_json_calls=bare_json_calls)
    bounds = [0, *sorted(set(cuts)), len(text)]
    events = [e for a, b in zip(bounds, bounds[1:]) for e in parser.feed(text[a:b])] + parser.finish()
    reasoning = "".join(v for k, v in events if k == "reasoning")
    content = "".join(v for k, v in events if k == "content")
    return reasoning or None, content, [v for k, v in events if k == "tool_call"]


def _whole(text: str, starts_in_reasoning: bool = False, tools=None, bare_json_calls: bool = False):
    reasoning, content, calls = parse_reply(text, starts_in_reasoning=starts_in_reasoning, tools=tools,
                                            bare_json_calls=bare_json_calls)
    return reasoning or None, content, calls


EXAMPLES = [
    "<think>\nI should call the tool.\n\n</think>\n\nSure.\n" + hermes("a", {"x": "<tool_call>"}) + "\n",
    "\n\nreasoning\n\n</think>\n\n" + xml("edit", line="3", path="a.py") + "\n" + hermes("b", {}) + " tail \n",
    "no tags at all, just text\n\nwith  spaces  ",
    "  <think>unclosed reasoning with </thin",
    "text <tool_call>{bad}</tool_call> more <tool_call>\n" + '{"name": "unclosed"',
    hermes("only", [1]) + "<tool_c",
    "<thinking> is not <think>",
]


@pytest.mark.parametrize("starts_in_reasoning", [False, True])
@pytest.mark.parametrize("text", EXAMPLES, ids=range(len(EXAMPLES)))
def test_streaming_equals_whole_random_splits(text: str, starts_in_reasoning: bool) -> None:
    expected = _whole(text, starts_in_reasoning, TOOLS)
    rng = random.Random(text)
    for _ in range(150):
        cuts = rng.sample(range(1, len(text)), k=rng.randint(0, min(12, len(text) - 1)))
        assert _streamed(text, cuts, starts_in_reasoning, TOOLS) == expected, cuts
    assert _streamed(text, list(range(1, len(text))), starts_in_reasoning, TOOLS) == expected  # char by char


FRAGMENTS = st.sampled_from(
    ["<think>", "</think>", "<tool_call>", "</tool_call>", "<function=f>", "</function>", "<parameter=line>",
     "</parameter>", '{"name": "f", "arguments": {"a": 1}}', '{"name": "g"}', "{", "}", "\n", "\n\n", " ", "  ",
     "x", "hello world", "42", "<", "</", "<tool", "call>", "think>", "東京", "😀", hermes("f", {"a": 1}),
     xml("edit", line="3"), "<tool_call>\n<function=edit>\n<parameter=line>\n",
     "\n</parameter>\n</function>\n</tool_call>", "```json\n", "```", "\n```", "json", " \t",
     '{"name": "edit", "arguments": {"line": 1}}', '{"name": "bare"']
)


@settings(max_examples=400, deadline=None)
@given(st.lists(FRAGMENTS, max_size=14), st.booleans(), st.booleans(), st.data())
def test_streaming_equals_whole_fuzz(fragments: list[str], starts_in_reasoning: bool, bare_json_calls: bool, data) -> None:
    text = "".join(fragments)
    tail = text[text.find("</think>") + 1 :]
    if "</think>" in tail:
        text = text[: text.find("</think>") + 1] + tail.replace("</think>", "")  # one </think> at most
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=10))
    expected = _whole(text, starts_in_reasoning, TOOLS, bare_json_calls)
    assert _streamed(text, cuts, starts_in_reasoning, TOOLS, bare_json_calls) == expected


def test_stream_holds_partial_tags() -> None:
    parser = StreamParser(tools=None)
    assert parser.feed("Hello <tool") == [("content", "Hello")]
    assert parser.feed("_call>\n{\"name\": \"f\", ") == []
    events = parser.feed('"arguments": {}}\n</tool_call>')
    assert [(k, v.name if k == "tool_call" else v) for k, v in events] == [("tool_call", "f")]
    assert parser.feed("<tool_call>never closed") == []
    assert parser.finish() == [("content", "\n<tool_call>never closed")]


def test_stream_reasoning_events() -> None:
    parser = StreamParser(starts_in_reasoning=True)
    assert parser.feed("\nstep one\n") == [("reasoning", "step one")]
    assert parser.feed("step two\n</thi") == [("reasoning", "\nstep two")]
    assert parser.feed("nk>\n\nAnswer") == [("content", "Answer")]
    assert parser.finish() == []


def test_stream_first_close_vs_whole_last_close() -> None:
    """Documented difference: a stream cannot take content back, so it ends reasoning at the first </think>."""
    text = "a</think>b</think>c"
    assert _whole(text, True) == ("a</think>b", "c", [])
    assert _streamed(text, [3], True) == ("a", "b</think>c", [])


def test_stream_without_tool_detection() -> None:
    parser = StreamParser(detect_tool_calls=False)
    text = "<think>r</think>x " + hermes("f", {}) + " "
    events = parser.feed(text) + parser.finish()
    assert events == [("reasoning", "r"), ("content", "x " + hermes("f", {}) + " ")]
