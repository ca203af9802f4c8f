"""Split a whole generated text into reasoning, content and tool calls (`stream_parser` does deltas).

Qwen output shapes handled (behaviour modelled on vLLM's qwen3 reasoning, hermes and qwen3_coder
tool parsers):
- reasoning: `<think>\\nR\\n</think>\\n\\nC`, or just `R\\n</think>\\n\\nC` when the chat template
  already opened `<think>` in the prompt (Qwen3 thinking-2507);
- Hermes tool calls (Qwen2.5, Qwen3): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`;
- Qwen3-Coder tool calls: `<tool_call>\\n<function=NAME>\\n<parameter=ARG>\\nVALUE\\n</parameter>\\n
  </function>\\n</tool_call>`, values typed from the tool's JSON schema;
- a bare call: the Hermes JSON alone, or in a ```json fence, without the tags (small models).
Model output is untrusted: nothing here raises on it. What does not parse stays in the content.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"

_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)</function>", re.DOTALL)
# A value ends at </parameter>, or (leniently, as vLLM) at the next parameter or the function's end.
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|\Z)", re.DOTALL)


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    """One function call; `arguments` is a JSON object as text (what OpenAI's API carries).
    The id is random, so it takes no part in equality."""

    name: str
    arguments: str
    id: str = field(default_factory=_new_call_id, compare=False)


def prompt_opens_reasoning(prompt: str) -> bool:
    """Whether generation starts inside `<think>`: the prompt's last turn opened it and left it open."""
    last_turn = prompt[prompt.rfind("<|im_start|>") :] if "<|im_start|>" in prompt else prompt
    return last_turn.rfind(THINK_OPEN) > last_turn.rfind(THINK_CLOSE)


def split_reasoning(text: str, *, starts_in_reasoning: bool) -> tuple[str | None, str]:
    """`(reasoning, content)`; reasoning is None when the output has no reasoning part.

    Splits at the LAST `</think>` (as Qwen's model cards do); reasoning loses its surrounding
    newlines and content its leading ones, undoing what the chat template adds around them.
    An unclosed reasoning part (output cut off) is all reasoning.
    """
    if not starts_in_reasoning:
        opened = text.lstrip()
        if not opened.startswith(THINK_OPEN):
            return None, text
        text = opened[len(THINK_OPEN) :]
    end = text.rfind(THINK_CLOSE)
    if end < 0:
        return text.strip("\n"), ""
    return text[:end].strip("\n"), text[end + len(THINK_CLOSE) :].lstrip("\n")


def parse_tool_calls(text: str, tools: list[dict[str, Any]] | None = None) -> tuple[str, list[ToolCall]]:
    """`(content, calls)`. `tools` (JSON schemas) only type Qwen3-Coder parameter values.

    Text around calls is kept: each piece loses the whitespace that faces a call, and the
    non-empty pieces are joined by newlines. Unclosed or unparsable blocks stay as text.
    """
    pieces, calls, current, pos = [], [], "", 0
    while (start := text.find(TOOL_OPEN, pos)) >= 0:
        end = text.find(TOOL_CLOSE, start + len(TOOL_OPEN))
        if end < 0:
            break
        parsed = parse_tool_block(text[start + len(TOOL_OPEN) : end], tools)
        stop = end + len(TOOL_CLOSE)
        if parsed:
            pieces.append(current + text[pos:start])
            calls.extend(parsed)
            current = ""
        else:
            current += text[pos:stop]
        pos = stop
    pieces.append(current + text[pos:])
    if not calls:
        return pieces[0], []
    pieces = [p.rstrip() if i == 0 else p.lstrip() if i == len(pieces) - 1 else p.strip() for i, p in enumerate(pieces)]
    return "\n".join(p for p in pieces if p), calls


def parse_tool_block(body: str, tools: list[dict[str, Any]] | None) -> list[ToolCall] | None:
    """The calls inside one `<tool_call>...</tool_call>`, or None if it is neither known form."""
    if body.lstrip().startswith("<function="):
        return _parse_xml(body, tools)
    call = _parse_hermes(body)
    return [call] if call else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN/Infinity: Python accepts them, JSON does not


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 would be re-serialized as the non-JSON `Infinity`
        raise ValueError(f"{text} is out of range")
    return value


def _loads(text: str) -> Any:
    """json.loads for model output: only values that serialize back to valid JSON."""
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:  # absurdly deep nesting: as unparsable as bad syntax
        raise ValueError("JSON nested too deeply") from None


def _parse_hermes(body: str) -> ToolCall | None:
    try:
        obj = _loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):  # Qwen2.5's template teaches JSON-encoded strings too
        try:
            arguments = _loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(name=obj["name"], arguments=json.dumps(arguments, ensure_ascii=False))


def _parse_xml(body: str, tools: list[dict[str, Any]] | None) -> list[ToolCall] | None:
    calls, pos = [], 0
    for match in _FUNCTION.finditer(body):
        if body[pos : match.start()].strip():
            return None
        name = match.group(1).strip()
        schemas = _parameter_schemas(tools, name)
        arguments = {}
        for param in _PARAMETER.finditer(match.group(2)):
            value = param.group(2)
            value = value[1:] if value.startswith("\n") else value
            value = value[:-1] if value.endswith("\n") else value
            key = param.group(1).strip()
            arguments[key] = _convert(value, schemas.get(key))
        calls.append(ToolCall(name=name, arguments=json.dumps(arguments, ensure_ascii=False)))
        pos = match.end()
    return calls if calls and not body[pos:].strip() else None


def _functions(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The function specs of `tools`, given OpenAI-style `{"type": "function", "function": {...}}` or bare."""
    functions = (tool.get("function", tool) if isinstance(tool, dict) else None for tool in tools or [])
    return [f for f in functions if isinstance(f, dict)]


def _parameter_schemas(tools: list[dict[str, Any]] | None, name: str) -> dict[str, Any]:
    """`properties` of the named tool."""
    for function in _functions(tools):
        if function.get("name") == name:
            parameters = function.get("parameters")
            properties = parameters.get("properties") if isinstance(parameters, dict) else None
            return properties if isinstance(properties, dict) else {}
    return {}


def _convert(value: str, schema: Any) -> Any:
    """A Qwen3-Coder parameter value as its schema type; anything that does not fit stays a string."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(kind, list):  # ["integer", "null"]
        kind = next((k for k in kind if k != "null"), "null")
    if kind in (None, "string"):
        return value
    text = value.strip()
    if text == "null":
        return None
    if kind == "boolean":
        return {"true": True, "false": False}.get(text.lower(), value)
    expected = {"integer": int, "number": (int, float), "object": dict, "array": list}.get(kind)
    if expected is None:
        return value
    try:
        parsed = _loads(text)
    except ValueError:
        return value
    if kind == "integer" and isinstance(parsed, float) and parsed.is_integer():
        parsed = int(parsed)
    return parsed if isinstance(parsed, expected) and not isinstance(parsed, bool) else value


# -- bare calls: small models (Qwen2.5-Coder-0.5B among them) often answer a tool request with the
# call's JSON alone, bare or in a ```json fence, instead of inside `<tool_call>` tags.
_FENCED = re.compile(r"```(?:json)?[ \t]*\n(.*)\n```", re.DOTALL)
_FENCED_CALL_START = re.compile(r"```(?:json)?[ \t]*\n\s*\{")
_FENCE_START_SO_FAR = re.compile(r"`{0,3}|```j(?:s(?:on?)?)?|```(?:json)?[ \t]*(?:\n\s*)?")


def bare_json_tool_call(content: str, tools: list[dict[str, Any]] | None) -> ToolCall | None:
    """The call in a reply that is only a call's JSON, bare or fenced; taken only when it is exactly
    one object naming one of `tools`, so an answer that merely is JSON stays content."""
    text = content.strip()
    if fenced := _FENCED.fullmatch(text):
        text = fenced.group(1).strip()
    if not text.startswith("{"):
        return None
    calls = parse_tool_block(text, tools) or []
    names = {function.get("name") for function in _functions(tools)}
    return calls[0] if len(calls) == 1 and calls[0].name in names else None


def may_be_bare_call(text: str) -> bool:
    """Whether `text` (a reply so far) could still grow into one `bare_json_tool_call` takes: a
    stream holds such content back until it knows."""
    t = text.lstrip()
    return t.startswith("{") or bool(_FENCED_CALL_START.match(t) or _FENCE_START_SO_FAR.fullmatch(t))


def parse_reply(text: str, *, starts_in_reasoning: bool, tools: list[dict[str, Any]] | None = None,
                detect_tool_calls: bool = True, bare_json_calls: bool = False) -> tuple[str | None, str, list[ToolCall]]:
    """`(reasoning, content, calls)` of a whole reply. `bare_json_calls`: a reply with no tagged call
    that is a bare call of one of `tools` becomes that call (for tool_choice auto)."""
    reasoning, content = split_reasoning(text, starts_in_reasoning=starts_in_reasoning)
    calls: list[ToolCall] = []
    if detect_tool_calls:
        content, calls = parse_tool_calls(content, tools)
    if bare_json_calls and not calls and (call := bare_json_tool_call(content, tools)):
        content, calls = "", [call]
    return reasoning, content, calls
