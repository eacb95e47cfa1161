"""The request and response bodies, in OpenAI's shapes, plus the two steering fields this server adds.

Requests forbid fields they do not know, so a client never believes an option was applied when it
was not. OpenAI fields this server accepts but cannot act on (logprobs, penalties, ...) are declared
so that their no-op values still pass; ``refused_field`` names the first one set to anything else.
Chat requests serve ``tools``, ``tool_choice`` and ``response_format`` (the core checks their values).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# --- the steering fields (sent with the OpenAI client's extra_body) --------------------------------

HeadsField = Literal["context", "instructions"] | dict[str, list[int]] | list[int]
"""A shipped set by purpose, ``{"layer": [heads]}``, or a list of layers (all their heads). Never a file
path: a client must not make the server read its files."""


class GroupOptions(BaseModel):
    """The steering settings of one emphasis group; a field left out is inherited (head set, then model)."""

    model_config = ConfigDict(extra="forbid")

    heads: HeadsField | None = None
    alpha: Annotated[float, Field(gt=0)] | None = None
    steer_generated: bool | None = None
    generated_alpha: Annotated[float, Field(gt=0)] | None = None
    steer: bool | None = None
    """False: the plain model (``Steering.enabled``)."""
    select: Literal["all", "relevant"] | None = None


class PastaOptions(GroupOptions):
    """``Steering`` as JSON: the context group's settings, and the other groups' under ``groups``."""

    groups: dict[str, GroupOptions] | None = None


Emphasis = list[str] | dict[str, list[str]]
"""Substrings of the final prompt to emphasize: a list (the context group) or a list per group."""


# --- requests ------------------------------------------------------------------------------------

NO_OP_VALUES: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None,),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "user": (None,),
    "store": (None, False),
    "metadata": (None,),
    "service_tier": (None, "auto"),
    "reasoning_effort": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "audio": (None,),
    "web_search_options": (None,),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None,),
}
"""OpenAI fields that this server does not implement, and the values of each that ask for nothing."""

SERVED_ON_CHAT = frozenset({"tools", "tool_choice", "response_format"})
"""Fields of NO_OP_VALUES that /v1/chat/completions honours whatever their value."""

WHY_REFUSED: dict[str, str] = {
    "tools": "only /v1/chat/completions takes tools",
    "tool_choice": "only /v1/chat/completions takes tools",
    "parallel_tool_calls": "it cannot be enforced: a forced tool_choice writes one call, 'auto' as many as the "
                           "model writes",
    "functions": "the deprecated functions field is not served; send tools",
    "function_call": "the deprecated function_call field is not served; send tool_choice",
    "response_format": "only /v1/chat/completions takes response_format",
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Request(BaseModel):
    """The fields both endpoints share."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    """Omitted: greedy (pasta-rag's default), where OpenAI would sample at 1."""
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    top_k: Annotated[int, Field(ge=1)] | None = None
    """vLLM's extra (also sent by many OpenAI-compatible clients); it only acts when sampling."""
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    """vLLM's extra: 1 is none."""
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    """vLLM's extra: the end-of-sequence token is held back until this many tokens are written."""
    n: Annotated[int, Field(ge=1)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    emphasis: Emphasis | None = None
    pasta: PastaOptions | None = None

    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    user: Any = None
    store: Any = None
    metadata: Any = None
    service_tier: Any = None
    reasoning_effort: Any = None
    modalities: Any = None
    prediction: Any = None
    audio: Any = None
    web_search_options: Any = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: str
    """A JSON object, as a string (OpenAI's shape)."""


class ToolCall(BaseModel):
    """A call the assistant made: in a response, and in the history a client sends back."""

    model_config = ConfigDict(extra="forbid")

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """A message of the history: system / developer / user text, an assistant answer (text and/or
    ``tool_calls``), or a ``tool`` result answering the call ``tool_call_id``. Images are not served."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _fields_of_its_role(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content (only an assistant message with tool_calls "
                             "may leave it out)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages carry tool_calls, not a {self.role} message")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError(f"only tool messages carry a tool_call_id, not a {self.role} message")
        return self

    def text(self) -> str | None:
        if self.content is None or isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def core(self) -> dict[str, Any]:
        """The message as the core's prompts take it (``pasta_rag.prompts.Message``)."""
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        if self.name:
            message["name"] = self.name
        return message


class ChatCompletionRequest(_Request):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None


class CompletionRequest(_Request):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    best_of: Any = None
    echo: Any = None
    suffix: Any = None

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def refused_field(request: _Request) -> tuple[str, str] | None:
    """The first field set to something this server cannot do, and why; None when every field can be honoured."""
    served = SERVED_ON_CHAT if isinstance(request, ChatCompletionRequest) else frozenset()
    for name, no_ops in NO_OP_VALUES.items():
        if name in type(request).model_fields and name not in served and getattr(request, name) not in no_ops:
            return name, WHY_REFUSED.get(name, "this server does not implement it")
    if (request.n or 1) > 1:
        return "n", "one choice per request only; send n requests instead"
    if request.stream_options is not None and not request.stream:
        return "stream_options", "it is only allowed with stream=true"
    return None


# --- responses -----------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GroupReport(BaseModel):
    """What one emphasis group steered."""

    group: str
    emphasized_tokens: int
    head_set: str
    """``context`` / ``instructions`` (the model's shipped sets) or ``custom`` (the request's own)."""
    heads: int
    """How many (layer, head) pairs were steered for this group."""
    alpha: float


class PastaReport(BaseModel):
    """What the request steered, so a client can see its emphasis arrived."""

    steered: bool
    emphasized_tokens: int
    """Prompt tokens emphasized by any group."""
    groups: list[GroupReport]


class InvalidToolCall(BaseModel):
    """pasta-rag's extra: a call the model wrote that cannot be run (bad JSON, unknown tool, arguments
    off the schema), so that a client sees it instead of losing it. Forced calls are always valid."""

    id: str
    name: str | None
    arguments: str
    error: str


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    """None when the answer is tool calls only (OpenAI's shape)."""
    tool_calls: Annotated[list[ToolCall] | None, Field(exclude_if=lambda calls: calls is None)] = None
    """Left out of an answer without calls, as OpenAI leaves it out."""
    invalid_tool_calls: Annotated[list[InvalidToolCall] | None, Field(exclude_if=lambda calls: calls is None)] = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    pasta: PastaReport


class DeltaFunction(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    """A piece of a streamed tool call: the first carries its id and name, the next its arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: Annotated[list[DeltaToolCall] | None, Field(exclude_if=lambda calls: calls is None)] = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    pasta: PastaReport | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    pasta: PastaReport | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "pasta-rag"
    max_model_len: int | None = None
    """The context window in tokens, under vLLM's name (``pasta_rag.remote.RemoteModel`` reads it)."""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

