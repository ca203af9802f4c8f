"""Text side of a model: tokenizer, chat template rendering, and output parsers."""

from .chat_template import CHATML_TEMPLATE, ChatTemplateError, render_chat
from .parsers import StreamParser, ToolCall, parse_tool_calls, prompt_opens_reasoning, split_reasoning
from .tokenizer import IncrementalDecoder, Tokenizer

__all__ = [
    "CHATML_TEMPLATE",
    "ChatTemplateError",
    "IncrementalDecoder",
    "StreamParser",
    "Tokenizer",
    "ToolCall",
    "parse_tool_calls",
    "prompt_opens_reasoning",
    "render_chat",
    "split_reasoning",
]
