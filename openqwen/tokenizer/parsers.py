"""Split generated text into reasoning, content and tool calls; whole texts or streamed deltas.

Qwen output shapes handled (behaviour modelled on vLLM's qwen3 reasoning, hermes and qwen3_coder
tool parsers):
- reasoning: `<think>\\nR\\n</think>\\n\\nC`, or just `R\\n</think>\\n\\nC` when the chat template
  already opened `<think>` in the prompt (Qwen3 thinking-2507);
- Hermes tool calls (Qwen2.5, Qwen3): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`;
- Qwen3-Coder tool calls: `<tool_call>\\n<function=NAME>\\n<parameter=ARG>\\nVALUE\\n</parameter>\\n
  </function>\\n</tool_call>`, values typed from the tool's JSON schema.
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
        parsed = _parse_block(text[start + len(TOOL_OPEN) : end], tools)
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


def _parse_block(body: str, tools: list[dict[str, Any]] | None) -> list[ToolCall] | None:
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


def _parameter_schemas(tools: list[dict[str, Any]] | None, name: str) -> dict[str, Any]:
    """`properties` of the named tool; accepts OpenAI `{"type": "function", "function": {...}}` or bare."""
    for tool in tools or []:
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("name") == name:
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


Event = tuple[str, Any]  # ("reasoning", str) | ("content", str) | ("tool_call", ToolCall)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that could be the start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class StreamParser:
    """Streaming version of `split_reasoning` + `parse_tool_calls`: feed text deltas, get events.

    Joining the events gives what the whole-text functions return, with one exception: a stream
    cannot take back content, so it ends reasoning at the FIRST `</think>` (the whole-text split
    uses the last; they differ only if the model writes `</think>` twice). Text that could still
    become a tag (`<tool_c`, a trailing newline of reasoning) is held until decided; `finish()`
    releases whatever is left, an unclosed `<tool_call>` as content.
    """

    def __init__(
        self,
        *,
        starts_in_reasoning: bool = False,
        tools: list[dict[str, Any]] | None = None,
        detect_tool_calls: bool = True,
    ) -> None:
        self._tools, self._detect_tools = tools, detect_tool_calls
        self._events: list[Event] = []
        # Reasoning stage: "start" (is there a <think>?) -> "reasoning" -> "content".
        self._state = "reasoning" if starts_in_reasoning else "start"
        self._pending = ""  # text not yet given to a stage
        self._reasoning_begun = False  # leading newlines of reasoning are dropped
        self._held_newlines = ""  # trailing newlines of reasoning, dropped if </think> follows
        self._content_begun = False  # leading newlines after </think> are dropped
        # Tool-call stage.
        self._tool_pending = ""  # from a (possible) <tool_call> up to its </tool_call>
        self._calls_seen = False
        self._piece_begun = False  # the text piece since the last call has non-blank text
        self._any_piece = False  # an earlier piece had text: the next one starts with "\n"
        self._held_ws = ""  # trailing whitespace, dropped if a call follows

    def feed(self, delta: str) -> list[Event]:
        self._pending += delta
        self._advance(final=False)
        return self._take()

    def finish(self) -> list[Event]:
        self._advance(final=True)
        if self._detect_tools:
            self._text(self._tool_pending)
            self._tool_pending = ""
            if self._held_ws:
                self._emit("content", self._held_ws)
                self._held_ws = ""
        return self._take()

    def _advance(self, final: bool) -> None:
        if self._state == "start":
            opened = self._pending.lstrip()
            if opened.startswith(THINK_OPEN):
                self._pending, self._state = opened[len(THINK_OPEN) :], "reasoning"
            elif THINK_OPEN.startswith(opened) and not final:
                return  # blank so far, or a prefix of <think>
            else:
                self._state, self._content_begun = "content", True  # no reasoning: text kept verbatim
        if self._state == "reasoning":
            end = self._pending.find(THINK_CLOSE)
            if end < 0:
                keep = 0 if final else _partial_suffix(self._pending, THINK_CLOSE)
                self._reasoning(self._pending[: len(self._pending) - keep])
                self._pending = self._pending[len(self._pending) - keep :]
                return
            self._reasoning(self._pending[:end])
            self._held_newlines = ""
            self._pending, self._state = self._pending[end + len(THINK_CLOSE) :], "content"
        text, self._pending = self._pending, ""
        if not self._content_begun:
            text = text.lstrip("\n")
            self._content_begun = bool(text)
        if not self._detect_tools:
            self._emit("content", text)
        else:
            self._content(text)

    def _reasoning(self, text: str) -> None:
        if not self._reasoning_begun:
            text = text.lstrip("\n")
            self._reasoning_begun = bool(text)
        text = self._held_newlines + text
        body = text.rstrip("\n")
        self._held_newlines = text[len(body) :]
        self._emit("reasoning", body)

    def _content(self, text: str) -> None:
        buf, self._tool_pending = self._tool_pending + text, ""
        while True:
            if not buf.startswith(TOOL_OPEN):
                start = buf.find(TOOL_OPEN)
                if start < 0:
                    keep = _partial_suffix(buf, TOOL_OPEN)
                    self._text(buf[: len(buf) - keep])
                    self._tool_pending = buf[len(buf) - keep :]
                    return
                self._text(buf[:start])
                buf = buf[start:]
            end = buf.find(TOOL_CLOSE, len(TOOL_OPEN))
            if end < 0:
                self._tool_pending = buf
                return
            stop = end + len(TOOL_CLOSE)
            calls = _parse_block(buf[len(TOOL_OPEN) : end], self._tools)
            if calls:
                self._held_ws, self._calls_seen, self._piece_begun = "", True, False
                self._events.extend(("tool_call", call) for call in calls)
            else:
                self._text(buf[:stop])
            buf = buf[stop:]

    def _text(self, text: str) -> None:
        """Content outside calls, trimmed where it faces a call exactly as parse_tool_calls does."""
        if self._calls_seen and not self._piece_begun:
            text = text.lstrip()
        body = text.rstrip()
        if not body:
            self._held_ws += text
            return
        prefix = ""
        if not self._piece_begun:
            self._piece_begun = True
            prefix = "\n" if self._any_piece else ""
            self._any_piece = True
        self._emit("content", prefix + self._held_ws + body)
        self._held_ws = text[len(body) :]

    def _emit(self, kind: str, text: str) -> None:
        if not text:
            return
        if self._events and self._events[-1][0] == kind:
            self._events[-1] = (kind, self._events[-1][1] + text)
        else:
            self._events.append((kind, text))

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events
