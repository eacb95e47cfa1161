"""PastaLLM: a LlamaIndex LLM whose attention is steered toward the retrieved context.

Query engines and response synthesizers hand the retrieved text to the LLM as
template variables (``context_str``; ``context_msg`` and ``existing_answer``
in refine). ``PastaLLM`` wraps those variables in emphasis markers right
before the template is formatted, so every compact / refine / tree_summarize
answer, streaming or not, sync or async, is steered toward the documents
without the user writing any markup. The core model strips the markers and
steers its profiled heads toward the marked tokens (PASTA).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    AudioBlock,
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    DocumentBlock,
    ImageBlock,
    LLMMetadata,
    MessageRole,
    VideoBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.llm import default_completion_to_prompt
from llama_index.core.prompts.base import BasePromptTemplate
from llama_index.core.types import Model
from pydantic import StrictBool, StrictFloat

from pasta_rag import Generation, PastaModel, emphasize, has_markers, strip_markers

DEFAULT_CONTEXT_VARIABLES = ("context_str", "context_msg", "existing_answer")
"""The template variables LlamaIndex's synthesizers and chat engines use for retrieved text
(``context_str``), the next chunk in refine (``context_msg``) and the answer so far
(``existing_answer``, built from earlier chunks)."""

CALL_OPTIONS = frozenset(
    {
        "max_new_tokens",
        "temperature",
        "top_p",
        "top_k",
        "repetition_penalty",
        "stop",
        "seed",
        "steer",
        "heads",
        "alpha",
        "steer_generated",
        "generated_alpha",
        "emphasis",
    }
)
"""Keyword arguments ``complete`` / ``chat`` and their variants accept, overriding the fields per call."""

_MEDIA_BLOCKS = (ImageBlock, AudioBlock, VideoBlock, DocumentBlock)

_SHARED_MODELS: dict[tuple[str, str], PastaModel] = {}
_SHARED_LOCK = threading.Lock()


def load_shared_model(source: str | os.PathLike = "default", **load_kwargs: Any) -> PastaModel:
    """Load a PastaModel once per process and hand the same object to every caller.

    ``Settings.llm = PastaLLM()`` in one module and ``PastaLLM()`` in another then share one
    copy of the weights. ``load_kwargs`` go to ``PastaModel.from_pretrained`` (``heads``,
    ``alpha``, ``device``, ``dtype``, ...); different arguments load a separate model.
    """
    key = (os.fspath(source), repr(sorted(load_kwargs.items())))
    with _SHARED_LOCK:
        if key not in _SHARED_MODELS:
            _SHARED_MODELS[key] = PastaModel.from_pretrained(source, **load_kwargs)
        return _SHARED_MODELS[key]


class PastaLLM(CustomLLM):
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
    max_new_tokens: int = Field(default=256, gt=0, description="The most tokens generated per call.")
    temperature: float = Field(default=0.0, ge=0.0, description="Sampling temperature; 0 is greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (when temperature > 0).")
    top_k: int | None = Field(default=None, gt=0, description="Top-k sampling (when temperature > 0).")
    repetition_penalty: float = Field(default=1.0, gt=0.0, description="1.0 means no penalty.")
    stop: list[str] = Field(
        default_factory=list, description="Stop strings: generation ends before the first one (multi-token ok)."
    )
    seed: int | None = Field(default=None, description="Random seed for sampling, for reproducible answers.")
    steer: bool = Field(
        default=True, description="Steer toward emphasized text. False runs the plain model on every prompt."
    )
    heads: Any | None = Field(
        default=None,
        description="Head set to steer: {'layer': [heads]}, a list of layers, a JSON file, or a set shipped for "
        "the model: 'context' (retrieved passages) or 'instructions' (emphasized instructions). None: 'context'.",
    )
    alpha: StrictFloat | None = Field(  # strict: a bool or a string is refused, not read as a number
        default=None, gt=0.0, description="Attention scale for non-emphasized tokens (paper: 0.01). None: model's."
    )
    steer_generated: StrictBool | None = Field(
        default=None,
        description="Also push down attention to the generated tokens in the steered heads (the paper does not; "
        "small models then repeat less). None: what the head set was chosen with, else False.",
    )
    generated_alpha: StrictFloat | None = Field(
        default=None, gt=0.0,
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
        "instructions as one) and the `system_prompt` field, so long chats keep following them.",
    )
    is_chat_model: bool = Field(
        default=True,
        description="Use the model's chat template (set automatically: True when the tokenizer has one).",
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Arguments for PastaModel.from_pretrained when the model is loaded by name "
        "(device, dtype, attn_implementation, ...).",
    )
    set_global_tokenizer: bool = Field(
        default=True,
        exclude=True,
        description="When LlamaIndex has no global tokenizer yet, set it to this model's, so prompt packing "
        "counts the tokens this model reads (and nothing fetches tiktoken files).",
    )

    _model: PastaModel = PrivateAttr()

    def __init__(self, model: PastaModel | str | os.PathLike | None = None, **kwargs: Any) -> None:
        """``model``: an already-loaded PastaModel (shared, not copied) or a name / path to load once
        per process (see ``load_shared_model``). Every other argument is a field of this class."""
        explicit_chat = "is_chat_model" in kwargs
        if isinstance(model, PastaModel):
            core = model
            kwargs.setdefault("model_name", model.name)
        elif model is None or isinstance(model, (str, os.PathLike)):
            if model is not None:
                kwargs["model_name"] = os.fspath(model)
            source = kwargs.get("model_name", "default")
            core = load_shared_model(source, **kwargs.get("model_kwargs", {}))
            kwargs["model_name"] = core.name
        else:
            raise TypeError(
                f"model must be a pasta_rag.PastaModel, a model name or a path; got {type(model).__name__}. "
                "To wrap a transformers model, build PastaModel(model, tokenizer) first."
            )
        if not explicit_chat:
            kwargs["is_chat_model"] = bool(getattr(core.tokenizer, "chat_template", None))
        window = kwargs.get("context_window") or core.context_window
        if window > core.context_window:
            raise ValueError(
                f"context_window={window} is larger than what {core.name} reads ({core.context_window} tokens)."
            )
        kwargs["context_window"] = window
        super().__init__(**kwargs)
        self._model = core
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.set_global_tokenizer:
            _use_model_tokenizer(core)

    @classmethod
    def class_name(cls) -> str:
        return "PastaLLM"

    @property
    def pasta_model(self) -> PastaModel:
        """The wrapped core model, to share with other PastaLLM or LangChain objects."""
        return self._model

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=self.is_chat_model,
            is_function_calling_model=False,
            model_name=self.model_name,
            system_role=MessageRole.SYSTEM,
        )

    # --- automatic emphasis of template variables ------------------------------------------

    def _mark_template(
        self, prompt: BasePromptTemplate, prompt_args: dict[str, Any]
    ) -> tuple[BasePromptTemplate, dict[str, Any]]:
        """Emphasize (or, when emphasis is off, sanitize) the context variables of a template.

        Both the call's arguments and the template's partially formatted variables are covered:
        refine puts ``existing_answer`` into the template with ``partial_format``.
        """
        names = set(self.context_variables)
        if not names:
            return prompt, prompt_args
        mark = emphasize if self.emphasize_context else strip_markers
        args = {k: mark(v) if k in names and isinstance(v, str) and v else v for k, v in prompt_args.items()}
        partials = {
            k: mark(v) for k, v in (getattr(prompt, "kwargs", None) or {}).items() if k in names and isinstance(v, str) and v
        }
        if partials:
            prompt = prompt.partial_format(**partials)
        return prompt, args

    def _get_prompt(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        prompt, prompt_args = self._mark_template(prompt, prompt_args)
        return super()._get_prompt(prompt, **prompt_args)

    def _get_messages(self, prompt: BasePromptTemplate, **prompt_args: Any) -> list[ChatMessage]:
        prompt, prompt_args = self._mark_template(prompt, prompt_args)
        return super()._get_messages(prompt, **prompt_args)

    def _extend_prompt(self, formatted_prompt: str) -> str:
        if self.system_prompt and self.emphasize_system_prompt:
            formatted_prompt = emphasize(self.system_prompt) + "\n\n" + formatted_prompt
            if self.query_wrapper_prompt:
                formatted_prompt = self.query_wrapper_prompt.format(query_str=formatted_prompt)
            return formatted_prompt
        return super()._extend_prompt(formatted_prompt)

    # The structured paths format the template inside a pydantic program, not in _get_prompt.

    def structured_predict(self, output_cls: type[Model], prompt: Any, llm_kwargs: dict[str, Any] | None = None,
                           **prompt_args: Any) -> Model:
        prompt, prompt_args = self._mark_template(prompt, prompt_args)
        return super().structured_predict(output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)

    async def astructured_predict(self, output_cls: type[Model], prompt: Any,
                                  llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Model:
        prompt, prompt_args = self._mark_template(prompt, prompt_args)
        return await super().astructured_predict(output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)

    def stream_structured_predict(self, output_cls: type[Model], prompt: Any,
                                  llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Any:
        prompt, prompt_args = self._mark_template(prompt, prompt_args)
        return super().stream_structured_predict(output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)

    async def astream_structured_predict(self, output_cls: type[Model], prompt: Any,
                                         llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Any:
        prompt, prompt_args = self._mark_template(prompt, prompt_args)
        return await super().astream_structured_predict(output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)

    # --- completion ------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete ``prompt``. Unformatted prompts of a chat model go through its chat template as one
        user turn (after the system prompt); ``formatted=True`` sends the string as it is."""
        core_prompt, options = self._completion_call(prompt, formatted, kwargs)
        return _completion_response(self._model.generate(core_prompt, **options))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        core_prompt, options = self._completion_call(prompt, formatted, kwargs)
        chunks = self._model.stream(core_prompt, **options)

        def gen() -> CompletionResponseGen:
            text = ""
            try:
                for delta in chunks:
                    text += delta
                    yield CompletionResponse(text=text, delta=delta)
            finally:
                chunks.close()

        return gen()

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        core_prompt, options = self._completion_call(prompt, formatted, kwargs)
        generation = await asyncio.to_thread(self._model.generate, core_prompt, **options)
        return _completion_response(generation)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        core_prompt, options = self._completion_call(prompt, formatted, kwargs)
        chunks = self._model.stream(core_prompt, **options)

        async def gen() -> CompletionResponseAsyncGen:
            text = ""
            async for delta in _in_thread(chunks):
                text += delta
                yield CompletionResponse(text=text, delta=delta)

        return gen()

    # --- chat ------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer the conversation, rendered with the model's chat template."""
        core_messages, options = self._chat_call(messages, kwargs)
        return _chat_response(self._model.generate(core_messages, **options))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        core_messages, options = self._chat_call(messages, kwargs)
        chunks = self._model.stream(core_messages, **options)

        def gen() -> ChatResponseGen:
            text = ""
            try:
                for delta in chunks:
                    text += delta
                    yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)
            finally:
                chunks.close()

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        core_messages, options = self._chat_call(messages, kwargs)
        generation = await asyncio.to_thread(self._model.generate, core_messages, **options)
        return _chat_response(generation)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        core_messages, options = self._chat_call(messages, kwargs)
        chunks = self._model.stream(core_messages, **options)

        async def gen() -> ChatResponseAsyncGen:
            text = ""
            async for delta in _in_thread(chunks):
                text += delta
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)

        return gen()

    # --- internals -------------------------------------------------------------------------

    def _completion_call(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if not isinstance(prompt, str):
            raise TypeError(f"complete() takes the prompt as a string, got {type(prompt).__name__}; "
                            "use chat() for a list of ChatMessage.")
        if formatted:
            core_prompt: Any = prompt
        elif self.completion_to_prompt is not default_completion_to_prompt:
            core_prompt = self.completion_to_prompt(prompt)
        elif self.is_chat_model:
            core_prompt = []
            if self.system_prompt:
                system = emphasize(self.system_prompt) if self.emphasize_system_prompt else self.system_prompt
                core_prompt.append({"role": "system", "content": system})
            core_prompt.append({"role": "user", "content": prompt})
        else:
            core_prompt = self._extend_prompt(prompt)
        return core_prompt, self._options(kwargs, _marked(core_prompt))

    def _chat_call(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if isinstance(messages, (str, ChatMessage)) or not messages:
            raise TypeError("chat() takes a non-empty sequence of ChatMessage; use complete() for a string.")
        core_messages = []
        for message in messages:
            if not isinstance(message, ChatMessage):
                raise TypeError(f"chat() takes ChatMessage objects, got {type(message).__name__}.")
            if any(isinstance(block, _MEDIA_BLOCKS) for block in message.blocks):
                raise ValueError(f"{self.model_name} reads text only; a {message.role.value} message holds "
                                 "image, audio, video or document blocks.")
            role = message.role.value if isinstance(message.role, MessageRole) else str(message.role)
            content = message.content or ""
            if role == MessageRole.SYSTEM.value and self.emphasize_system_prompt and content.strip():
                content = emphasize(content)
            core_messages.append({"role": role, "content": content})
        if not self.is_chat_model:
            core_messages = self.messages_to_prompt(
                [ChatMessage(role=m["role"], content=m["content"]) for m in core_messages]
            )
        return core_messages, self._options(kwargs, _marked(core_messages))

    def _options(self, kwargs: dict[str, Any], marked: bool) -> dict[str, Any]:
        unknown = set(kwargs) - CALL_OPTIONS
        if unknown:
            raise TypeError(
                f"PastaLLM got unexpected keyword argument(s) {sorted(unknown)}; "
                f"per-call options are {sorted(CALL_OPTIONS)}."
            )
        options: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "stop": list(self.stop),
            "seed": self.seed,
            "steer": self.steer,
            "heads": self.heads,
            "alpha": self.alpha,
            "steer_generated": self.steer_generated,
            "generated_alpha": self.generated_alpha,
            "emphasis": None,
        }
        options.update(kwargs)
        stop = options["stop"]
        if isinstance(stop, str):
            options["stop"] = [stop]
        elif stop is not None and not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {stop!r}.")
        if isinstance(options["emphasis"], str):
            options["emphasis"] = [options["emphasis"]]
        # Nothing emphasized: the plain model, silently (the core would warn on every such call).
        options["steer"] = bool(options["steer"]) and (marked or bool(options["emphasis"]))
        return options


def _marked(prompt: Any) -> bool:
    if isinstance(prompt, str):
        return has_markers(prompt)
    return any(has_markers(message["content"]) for message in prompt)


def _usage(generation: Generation) -> dict[str, Any]:
    return {
        "usage": {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens,
        },
        "finish_reason": generation.finish_reason,
        "steered": generation.steered,
    }


def _completion_response(generation: Generation) -> CompletionResponse:
    info = _usage(generation)
    return CompletionResponse(text=generation.text, raw=info, additional_kwargs=dict(info["usage"]))


def _chat_response(generation: Generation) -> ChatResponse:
    info = _usage(generation)
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, content=generation.text),
        raw=info,
        additional_kwargs=dict(info["usage"]),
    )


async def _in_thread(chunks: Iterator[str]) -> AsyncIterator[str]:
    """Iterate a blocking token stream without blocking the event loop; closing stops generation."""
    done = object()
    try:
        while (item := await asyncio.to_thread(next, chunks, done)) is not done:
            yield item  # type: ignore[misc]
    finally:
        try:
            await asyncio.to_thread(chunks.close)
        except ValueError:  # cancelled while a token was being fetched: it ends at max_new_tokens
            pass


def _use_model_tokenizer(core: PastaModel) -> None:
    """Count LlamaIndex's prompt-packing tokens with this model's tokenizer, unless one is set already."""
    import llama_index.core
    from llama_index.core import Settings

    if llama_index.core.global_tokenizer is None:
        Settings.tokenizer = core.tokenizer
