"""Request bodies of the OpenAI API (chat completions, completions), as pydantic models.

Unknown fields are accepted and ignored (`extra="allow"`), as real clients send many. Bounds are
declared here so bad values get a 400 before any work; responses are built as plain dicts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**63 - 1024  # the engine adds the choice index to the seed


class _Base(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class FunctionDefinition(_Base):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Base):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Base):
    name: str


class NamedToolChoice(_Base):
    type: Literal["function"] = "function"
    function: NamedFunction


class FunctionCall(_Base):
    name: str
    arguments: str = "{}"


class ToolCallIn(_Base):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(_Base):
    type: str  # "text" here; image_url / input_audio / file are refused with a clear message
    text: str | None = None


class ChatMessage(_Base):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class JsonSchemaSpec(_Base):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Base):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(_Base):
    include_usage: bool = False


class SamplingFields(_Base):
    """Sampling fields shared by chat and completions (OpenAI's plus vLLM's extras)."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1, le=1_000_000)
    min_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = Field(default=None)
    stop_token_ids: list[int] | None = Field(default=None, max_length=64)
    min_tokens: int | None = Field(default=None, ge=0, le=1_000_000)
    ignore_eos: bool = False
    logit_bias: dict[str, float] | None = Field(default=None, max_length=1024)
    n: int = Field(default=1, ge=1, le=64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def sampling_values(self) -> dict[str, Any]:
        """The SamplingParams fields the client set (None means: the model's default)."""
        names = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "seed", "min_tokens")
        values = {k: getattr(self, k) for k in names if getattr(self, k) is not None}
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        values["stop"] = [s for s in stops if s]
        values["stop_token_ids"] = list(self.stop_token_ids or [])
        values["ignore_eos"] = self.ignore_eos
        values["n"] = self.n
        return values


class ChatCompletionRequest(SamplingFields):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = Field(default=None, max_length=512)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: str | None = None


class CompletionRequest(SamplingFields):
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None
