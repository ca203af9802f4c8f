"""Split streamed text deltas into reasoning, content and tool-call events as they arrive.

The streaming twin of `parsers.parse_reply`: joining a stream's events gives what the whole-text
functions return, so the server's streamed and non-streamed replies agree.
"""

from __future__ import annotations

from typing import Any

from .parsers import THINK_CLOSE, THINK_OPEN, TOOL_CLOSE, TOOL_OPEN, bare_json_tool_call, may_be_bare_call, parse_tool_block

Event = tuple[str, Any]  # ("reasoning", str) | ("content", str) | ("tool_call", ToolCall)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that could be the start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class StreamParser:
    """Streaming version of `parse_reply`: feed text deltas, get events.

    Joining the events gives what `parse_reply` returns, with one exception: a stream cannot take
    back content, so it ends reasoning at the FIRST `</think>` (the whole-text split uses the last;
    they differ only if the model writes `</think>` twice). Text that could still become a tag
    (`<tool_c`, a trailing newline of reasoning) is held until decided, and with `bare_json_calls`
    so is content that may still be a bare JSON call; `finish()` releases whatever is left, an
    unclosed `<tool_call>` as content.
    """

    def __init__(
        self,
        *,
        starts_in_reasoning: bool = False,
        tools: list[dict[str, Any]] | None = None,
        detect_tool_calls: bool = True,
        bare_json_calls: bool = False,
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
        self._bare: str | None = "" if bare_json_calls else None  # content held while it may be a bare call

    def feed(self, delta: str) -> list[Event]:
        self._pending += delta
        self._advance(final=False)
        return self._take(final=False)

    def finish(self) -> list[Event]:
        self._advance(final=True)
        if self._detect_tools:
            self._text(self._tool_pending)
            self._tool_pending = ""
            if self._held_ws:
                self._emit("content", self._held_ws)
                self._held_ws = ""
        return self._take(final=True)

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
            calls = parse_tool_block(buf[len(TOOL_OPEN) : end], self._tools)
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

    def _take(self, final: bool) -> list[Event]:
        events, self._events = self._events, []
        return events if self._bare is None else self._hold_bare_call(events, final)

    def _hold_bare_call(self, events: list[Event], final: bool) -> list[Event]:
        """Content passes once it can no longer be a bare call, or once a tagged call shows the
        reply is not one; at the end, what is still held is either the call or content."""
        out: list[Event] = []
        for kind, value in events:
            if self._bare is not None and kind == "content":
                self._bare += value
                if may_be_bare_call(self._bare):
                    continue
                value, self._bare = self._bare, None
            elif self._bare is not None and kind == "tool_call":
                if self._bare:
                    out.append(("content", self._bare))
                self._bare = None
            out.append((kind, value))
        if final and self._bare:
            call = bare_json_tool_call(self._bare, self._tools)
            out.append(("tool_call", call) if call else ("content", self._bare))
        if final:
            self._bare = None
        return out
