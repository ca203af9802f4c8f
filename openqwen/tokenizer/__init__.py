"""Text side of a model: tokenizer, chat template rendering, and output parsers."""

from .chat_template import CHATML_TEMPLATE, ChatTemplateError, render_chat
from .parsers import ToolCall, bare_json_tool_call, parse_reply, parse_tool_calls, prompt_opens_reasoning, split_reasoning
from .stream_parser import StreamParser
from .tokenizer import IncrementalDecoder, Tokenizer

__all__ = [
    "CHATML_TEMPLATE",
    "ChatTemplateError",
    "IncrementalDecoder",
    "StreamParser",
    "Tokenizer",
    "ToolCall",
    "bare_json_tool_call",
    "parse_reply",
    "parse_tool_calls",
    "prompt_opens_reasoning",
    "render_chat",
    "split_reasoning",
]
