"""Render a model's own Jinja chat template exactly as transformers' `apply_chat_template` does.

The template decides everything about the prompt (system defaults, tool instructions, thinking
switches), so we never hand-write it; we only reproduce transformers' Jinja environment
(transformers/utils/chat_template_utils.py): a sandbox, `trim_blocks` + `lstrip_blocks`, loop
controls, a `tojson` that keeps non-ASCII text and key order, `raise_exception`, `strftime_now`.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

# For models without a template (base checkpoints): every Qwen chat model speaks ChatML, and base
# models have seen the same <|im_start|>/<|im_end|> tokens in pretraining, so this is the prompt
# they follow best. Content may be a string or a list of {"type": "text", "text": ...} parts.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Names a message's reasoning arrives under; transformers fills both `reasoning_content` (what
# Qwen templates read) and `thinking` from whichever is set.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ValueError):
    """The template rejected the conversation (its `raise_exception`) or could not render it."""


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; rendering
    just emits the body. Without it, templates that use the tag would not even compile."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore names, which could reach Python internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # same signature trick as jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} may not start with '_'")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Not jinja's own tojson: that one escapes <, >, & and ' for HTML, which changes the prompt.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
    """Compile once per distinct template text; templates come from model files, hence the sandbox."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, namespace=_Namespace)
    try:
        return env.from_string(template)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template does not compile: {e}") from e


def _prepare_message(message: dict[str, Any]) -> dict[str, Any]:
    """As transformers does: drop keys whose value is None (OpenAI clients send `content: null`,
    which templates would print as "None") and alias the reasoning field names."""
    message = {k: v for k, v in message.items() if v is not None}
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is not None:
        message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
    return message


def render_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    special_tokens: dict[str, str] | None = None,
    **kwargs: Any,
) -> str:
    """The prompt text for `messages`, like `apply_chat_template(..., tokenize=False)`.

    `tools` are JSON schemas (OpenAI `{"type": "function", "function": {...}}` dicts), passed
    to the template unchanged. `special_tokens` ({"eos_token": ..., ...}) become template
    variables; `kwargs` (e.g. `enable_thinking=False`) too, and win over them.
    Tool-call `arguments` are rendered as given: Qwen2.5's template JSON-encodes a string a second
    time, so callers holding OpenAI-style JSON strings should pass them decoded to dicts.
    """
    compiled = compile_template(template if template is not None else CHATML_TEMPLATE)
    context = {**(special_tokens or {}), **kwargs}
    try:
        return compiled.render(
            messages=[_prepare_message(m) for m in messages],
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            **context,
        )
    except jinja2.TemplateError as e:
        raise ChatTemplateError(e.message or str(e)) from e
    except TypeError as e:  # e.g. a list `content` given to a template that concatenates strings
        raise ChatTemplateError(f"chat template cannot render these messages: {e}") from e
