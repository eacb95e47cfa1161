"""PastaLLM: a LlamaIndex LLM whose attention is steered toward the retrieved context.

Query engines and response synthesizers hand the retrieved text to the LLM as template variables
(``context_str``; ``context_msg`` and ``existing_answer`` in refine). ``PastaLLM`` wraps those
variables in emphasis markers right before the template is formatted, so every compact / refine /
tree_summarize answer, streaming or not, sync or async, is steered toward the documents without the
user writing any markup. The core model strips the markers and steers its profiled heads toward the
marked tokens (PASTA). This class maps LlamaIndex's fields and calls onto ``pasta_rag.PastaModel``;
what the settings mean, and whether they are valid, is the core's business.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_serializer, field_validator
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection, default_completion_to_prompt
from llama_index.core.tools.types import BaseTool
from pydantic import SkipValidation

from pasta_rag import PastaModel, SamplingSettings, Steering
from pasta_rag.prompts import Prompt
from pasta_rag.remote import RemoteModel
from pasta_rag.settings import steering_keywords
from pasta_rag.tools import closed_schema

from . import responses
from .loading import core_model, remote_model, use_model_tokenizer
from .messages import core_messages, is_marked, system_message
from .options import DECODING_OPTIONS, TOOL_OPTIONS, call_emphasis, call_sampling, call_steering, check_call_options
from .templates import DEFAULT_CONTEXT_VARIABLES, TemplateEmphasis


class PastaLLM(TemplateEmphasis, CustomLLM, FunctionCallingLLM):
    """A local model steered toward the retrieved context (PASTA), for LlamaIndex.

    Examples:
        ```python
        from llama_index.core import Settings, VectorStoreIndex
        from llama_index.llms.pasta import PastaLLM

        Settings.llm = PastaLLM()  # the packaged SmolLM2-135M-Instruct
        engine = VectorStoreIndex.from_documents(docs).as_query_engine()
        print(engine.query("Where is the Eiffel Tower?"))  # answered from the documents
        ```

    Emphasis: the template variables named in ``context_variables`` are wrapped with
    ``pasta_rag.emphasize`` before the prompt is formatted (``predict``, ``stream``, their async
    twins and the structured-predict paths, which is what every query engine, response
    synthesizer and chat engine calls). Their values are treated as untrusted: marker characters
    already inside them (a poisoned document) are removed first. ``emphasize_context=False``
    keeps the removal but adds no emphasis: the plain model answers.

    Prompts that carry no emphasis run unsteered, without a warning: the model then computes
    exactly what the plain model computes.

    The decoding and steering fields are passed to the core as given (``SkipValidation``): its
    ``SamplingSettings`` and ``Steering`` check them, at construction and on every call.
    """

    model_name: str = Field(
        default="default",
        description="The model: 'default' (packaged SmolLM2-135M-Instruct), 'gemma3-270m', a .gguf file, "
        "a local folder or a hub id. Ignored when an already-loaded PastaModel is passed as `model`.",
    )
    context_window: int = Field(
        default=0,
        ge=0,
        description="Tokens the model reads (prompt + answer). 0 means the model's own window; a smaller "
        "value makes LlamaIndex pack less context into each prompt.",
    )
    max_new_tokens: SkipValidation[int] = Field(default=256, description="The most tokens generated per call.")
    temperature: SkipValidation[float] = Field(default=0.0, description="Sampling temperature; 0 is greedy decoding.")
    top_p: SkipValidation[float] = Field(default=1.0, description="Nucleus sampling mass (when temperature > 0).")
    top_k: SkipValidation[int | None] = Field(default=None, description="Top-k sampling (when temperature > 0).")
    repetition_penalty: SkipValidation[float] = Field(default=1.0, description="1.0 means no penalty.")
    stop: SkipValidation[list[str] | str | None] = Field(
        default_factory=list, description="Stop strings: generation ends before the first one (multi-token ok)."
    )
    seed: SkipValidation[int | None] = Field(default=None, description="Random seed for sampling (reproducible answers).")
    steering: SkipValidation[Steering | None] = Field(
        default=None,
        description="Every steering setting in one pasta_rag.Steering; the shortcut fields below (heads, alpha, "
        "steer_generated, generated_alpha, select, steer) win over it when set. Unset settings are the head set's, "
        "else the model's.",
    )
    steer: SkipValidation[bool | None] = Field(
        default=None,
        description="Steer toward emphasized text (None: the model's choice, which is yes). False runs the "
        "plain model on every prompt.",
    )
    select: SkipValidation[str | None] = Field(
        default=None,
        description="Which emphasized passages are steered (each retrieved chunk is one): 'relevant' (those that "
        "best match the question, BM25 on the rest of the prompt) or 'all'. None: 'relevant', unless `steering` "
        "says otherwise. Pinned instructions are never selected away.",
    )
    heads: Any | None = Field(
        default=None,
        description="Head set to steer: {'layer': [heads]}, a list of layers, a JSON file, or a set shipped for "
        "the model: 'context' (retrieved passages) or 'instructions' (emphasized instructions). None: 'context'.",
    )
    alpha: SkipValidation[float | None] = Field(
        default=None, description="Attention scale for non-emphasized tokens (paper: 0.01). None: model's."
    )
    steer_generated: SkipValidation[bool | None] = Field(
        default=None,
        description="Also push down attention to the generated tokens in the steered heads (the paper does not; "
        "small models then repeat less). None: what the head set was chosen with, else False.",
    )
    generated_alpha: SkipValidation[float | None] = Field(
        default=None,
        description="With steer_generated, the attention scale of generated tokens in the steered heads. "
        "None: what the head set was chosen with, else alpha.",
    )
    emphasize_context: bool = Field(
        default=True,
        description="Emphasize the retrieved context that query engines and chat engines format into prompts.",
    )
    context_variables: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CONTEXT_VARIABLES),
        description="Template variables that carry retrieved text; add your own custom-template variables here. "
        "Their values are emphasized (and forged markers stripped from them).",
    )
    emphasize_system_prompt: bool = Field(
        default=False,
        description="Pin instructions: emphasize every system message (agents and chat engines send their "
        "instructions as one) and the `system_prompt` field, so long chats keep following them. Pinned text is "
        "steered with the model's instructions head set; retrieved context inside a system message keeps its "
        "own emphasis and is never pinned.",
    )
    is_chat_model: bool = Field(
        default=True,
        description="Use the model's chat template (set automatically: True when the tokenizer has one).",
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Loading options for PastaModel.from_pretrained when the model is loaded by name "
        "(device, dtype, attn_implementation, ...).",
    )
    base_url: str | None = Field(
        default=None,
        description="A pasta-rag server (`pasta-rag serve`), e.g. http://localhost:8000/v1: the model runs there "
        "and steers what the marked text emphasizes (pasta_rag.remote). model_name, if given, is its served name.",
    )
    api_key: str | None = Field(
        default=None, exclude=True,
        description="The server's --api-key (default $PASTA_RAG_API_KEY). api_key, timeout and max_retries "
        "configure the connection to base_url only; without it they are accepted and kept, as in langchain-pasta "
        "(LangChain's standard test suite passes them to every chat model), so both integrations take the same "
        "arguments.",
    )
    timeout: float | None = Field(default=None, description="Seconds to wait for the server's answer.")
    max_retries: int = Field(default=2, description="Retries of a failed request to the server (the openai client's).")
    set_global_tokenizer: bool = Field(
        default=True,
        exclude=True,
        description="When LlamaIndex has no global tokenizer yet, set it to this model's, so prompt packing "
        "counts the tokens this model reads (and nothing fetches tiktoken files).",
    )

    _model: PastaModel | RemoteModel = PrivateAttr()

    def __init__(self, model: PastaModel | str | os.PathLike | None = None, **kwargs: Any) -> None:
        """``model``: an already-loaded PastaModel (shared, not copied) or a name / path to load once
        per process (see ``load_shared_model``). Every other argument is a field of this class."""
        if isinstance(model, (str, os.PathLike)):
            kwargs["model_name"] = os.fspath(model)
        if kwargs.get("base_url") is not None:
            core = remote_model(model, kwargs)
            kwargs.setdefault("is_chat_model", True)  # the server renders messages with its model's template
        else:
            core = core_model(model, kwargs.get("model_name", "default"), kwargs.get("model_kwargs", {}))
        if isinstance(model, PastaModel):
            kwargs.setdefault("model_name", core.name)
        else:
            kwargs["model_name"] = core.name  # the loaded model's own name, not the alias asked for
        if isinstance(core, PastaModel):
            kwargs.setdefault("is_chat_model", bool(getattr(core.tokenizer, "chat_template", None)))
        window = kwargs.get("context_window") or core.context_window
        if window > core.context_window:
            raise ValueError(
                f"context_window={window} is larger than what {core.name} reads ({core.context_window} tokens)."
            )
        kwargs["context_window"] = window
        super().__init__(**kwargs)
        self._model = core
        self._sampling({})  # the core checks the decoding fields now, not at the first query
        core.resolve_steering(self._steering({}, marked=True))  # and the steering ones, the head set included
        if self.set_global_tokenizer and isinstance(core, PastaModel):  # a server's tokenizer is not here
            use_model_tokenizer(core)

    @field_validator("steering", mode="before")
    @classmethod
    def _steering_from_dict(cls, value: Any) -> Any:
        """``from_dict`` hands back what ``to_dict`` wrote: the fields set, by name."""
        return Steering(**value) if isinstance(value, Mapping) else value

    @field_serializer("steering")
    def _steering_to_dict(self, value: Steering | None) -> dict[str, Any] | None:
        return None if value is None else value.given()

    @classmethod
    def class_name(cls) -> str:
        return "PastaLLM"

    @property
    def pasta_model(self) -> PastaModel | RemoteModel:
        """The wrapped core model, to share with other PastaLLM or LangChain objects."""
        return self._model

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=self.is_chat_model,
            is_function_calling_model=True,
            model_name=self.model_name,
            system_role=MessageRole.SYSTEM,
        )

    # --- completion ------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete ``prompt``. Unformatted prompts of a chat model go through its chat template as one
        user turn (after the system prompt); ``formatted=True`` sends the string as it is."""
        core_prompt, options = self._completion_call(prompt, formatted, kwargs)
        return responses.completion_response(self._model.generate(core_prompt, **options))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        core_prompt, options = self._completion_call(prompt, formatted, kwargs)
        return responses.stream_responses(self._model.stream(core_prompt, **options), responses.completion_delta)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        core_prompt, options = self._completion_call(prompt, formatted, kwargs)
        return responses.completion_response(await asyncio.to_thread(self._model.generate, core_prompt, **options))

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        core_prompt, options = self._completion_call(prompt, formatted, kwargs)
        return responses.astream_responses(self._model.astream(core_prompt, **options), responses.completion_delta)

    # --- chat ------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer the conversation, rendered with the model's chat template."""
        conversation, options = self._chat_call(messages, kwargs)
        return responses.chat_response(self._model.generate(conversation, **options))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        conversation, options = self._chat_call(messages, kwargs)
        return responses.stream_responses(self._model.stream(conversation, **options), responses.chat_delta,
                                          responses.last_chat_delta)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        conversation, options = self._chat_call(messages, kwargs)
        return responses.chat_response(await asyncio.to_thread(self._model.generate, conversation, **options))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        conversation, options = self._chat_call(messages, kwargs)
        return responses.astream_responses(self._model.astream(conversation, **options), responses.chat_delta,
                                           responses.last_chat_delta)

    # --- tools (FunctionCallingLLM) ---------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """``chat``'s arguments for ``chat_with_tools``: the tools as OpenAI function schemas, and the
        choice: ``tool_required`` forces a call (decoded under a grammar, so it parses), ``tool_choice``
        ("auto", "none", "required" or a tool's name) says it outright. The tools' objects take only the
        keys they list unless ``strict=False``."""
        if tool_required and tool_choice not in (None, "required"):
            raise ValueError(f"Pass tool_required=True or tool_choice={tool_choice!r}, not both.")
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str)
                            else user_msg)
        schemas = [tool.metadata.to_openai_tool(skip_length_check=True) for tool in tools]
        if strict is not False:
            schemas = [closed_schema(schema) for schema in schemas]
        choice = tool_choice or ("required" if tool_required else "auto")
        return {"messages": messages, "tools": schemas, "tool_choice": choice, **kwargs}

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        """Without ``allow_parallel_tool_calls``, only the first call is kept (as LlamaIndex's other LLMs do)."""
        if not allow_parallel_tool_calls:
            calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
            for extra in calls[1:]:
                response.message.blocks.remove(extra)
        return response

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The answer's tool calls; none is an error unless ``error_on_no_tool_call=False``. Calls that cannot
        run are in ``response.raw["invalid_tool_calls"]``, with the reason."""
        calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
        if not calls and error_on_no_tool_call:
            invalid = (response.raw or {}).get("invalid_tool_calls") if isinstance(response.raw, Mapping) else None
            detail = f" The calls it wrote could not run: {invalid}." if invalid else ""
            raise ValueError(f"The model called no tool.{detail} Pass tool_required=True to force a call.")
        return [ToolSelection(tool_id=c.tool_call_id or "", tool_name=c.tool_name,
                              tool_kwargs=c.tool_kwargs if isinstance(c.tool_kwargs, dict) else {})
                for c in calls]

    # --- from LlamaIndex's call to the core's ----------------------------------------------

    def _completion_call(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> tuple[Prompt, dict[str, Any]]:
        if not isinstance(prompt, str):
            raise TypeError(f"complete() takes the prompt as a string, got {type(prompt).__name__}; "
                            "use chat() for a list of ChatMessage.")
        if formatted:
            core_prompt: Prompt = prompt
        elif self.completion_to_prompt is not default_completion_to_prompt:
            core_prompt = self.completion_to_prompt(prompt)
        elif self.is_chat_model:
            system = [system_message(self.system_prompt, self.emphasize_system_prompt)] if self.system_prompt else []
            core_prompt = [*system, {"role": "user", "content": prompt}]
        else:
            core_prompt = self._extend_prompt(prompt)
        return core_prompt, self._options(kwargs, core_prompt)

    def _chat_call(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> tuple[Prompt, dict[str, Any]]:
        converted: Prompt = core_messages(messages, self.emphasize_system_prompt, self.model_name)
        if not self.is_chat_model:
            converted = self.messages_to_prompt([ChatMessage(role=m["role"], content=m["content"]) for m in converted])
        return converted, self._options(kwargs, converted)

    def _options(self, kwargs: dict[str, Any], prompt: Prompt) -> dict[str, Any]:
        """The core's keyword arguments for one call: its emphasis, Steering and SamplingSettings."""
        check_call_options(kwargs)
        emphasis = call_emphasis(kwargs)
        steering = self._steering(kwargs, marked=is_marked(prompt) or bool(emphasis))
        tools = {name: kwargs[name] for name in TOOL_OPTIONS if kwargs.get(name) is not None}
        return {"emphasis": emphasis, "steering": steering, "settings": self._sampling(kwargs), **tools}

    def _steering(self, kwargs: dict[str, Any], marked: bool) -> Steering:
        shortcuts = {name: getattr(self, name) for name in steering_keywords() if name in type(self).model_fields}
        return call_steering(self.steering, shortcuts, kwargs, marked)

    def _sampling(self, kwargs: dict[str, Any]) -> SamplingSettings:
        fields = {name: getattr(self, name) for name in DECODING_OPTIONS if name in type(self).model_fields}
        return call_sampling(fields, kwargs)
