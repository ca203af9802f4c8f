"""Request bodies of the Anthropic Messages API, as pydantic models.

Content blocks are one lenient model keyed by `type`: clients such as Claude Code send block
types and fields (cache_control, citations, ...) beyond the ones a local model can use, so the
translation in anthropic_api.py decides per type what to keep, ignore or refuse.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Base(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentBlock(_Base):
    type: str  # text, image, tool_use, tool_result, thinking, redacted_thinking, document, ...
    text: str | None = None
    # tool_use
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    # tool_result
    tool_use_id: str | None = None
    content: str | list[ContentBlock] | None = None
    is_error: bool | None = None
    # thinking
    thinking: str | None = None
    signature: str | None = None


class Message(_Base):
    role: Literal["user", "assistant", "system"]  # Claude Code 2.x puts system turns (environment notes) among messages
    content: str | list[ContentBlock]


class ToolDefinition(_Base):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    input_schema: dict[str, Any] | None = None  # absent for Anthropic's server tools (web search...)
    type: str | None = None


class ToolChoice(_Base):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(_Base):
    type: str  # "enabled" | "disabled" | "adaptive"
    budget_tokens: int | None = Field(default=None, ge=0)


class MessagesBase(_Base):
    model: str
    messages: list[Message] = Field(min_length=1)
    system: str | list[ContentBlock] | None = None
    tools: list[ToolDefinition] | None = Field(default=None, max_length=512)
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: dict[str, Any] | None = None  # {"format": {"type": "json_schema", "schema": {...}}}
    output_format: dict[str, Any] | None = None  # the same, as the structured-outputs beta named it


class MessagesRequest(MessagesBase):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=64)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=1_000_000)
    metadata: dict[str, Any] | None = None


class CountTokensRequest(MessagesBase):
    pass
