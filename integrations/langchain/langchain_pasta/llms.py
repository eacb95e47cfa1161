"""PastaLLM: a LangChain text-completion model (BaseLLM) over a local pasta-rag model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.language_models.base import LangSmithParams
from langchain_core.outputs import Generation as LCGeneration
from langchain_core.outputs import GenerationChunk, LLMResult

from pasta_rag import Generation
from pasta_rag.streaming import iterate_in_thread

from ._common import CoreRequest, PastaFields


class PastaLLM(PastaFields, BaseLLM):
    """A local completion model whose answers follow the emphasized parts of its prompt.

    The prompt is sent as plain text (no chat template), the way ``HuggingFacePipeline`` does; set
    ``chat_template=True`` to send it as one user message through the model's chat template, which
    an instruction-tuned model answers better. Emphasis comes as markers in the prompt
    (``format_docs``, ``pasta_rag.emphasize``) or as ``emphasis=[substrings]`` per call; with none,
    the answer is exactly the plain model's. ``batch`` (and ``generate`` with several prompts) runs
    one left-padded batch.

    .. code-block:: python

        llm = PastaLLM(model="default", max_tokens=32, stop=["\\n\\n"])
        llm.invoke(f"Context: {emphasize(passage)}\\nQuestion: ...\\nAnswer:")
    """

    chat_template: bool = False
    """Wrap the prompt in one user message and apply the model's chat template."""

    @property
    def _llm_type(self) -> str:
        return "pasta"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {**self._settings_params(), "chat_template": self.chat_template}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="pasta",
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="llm",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if stop := stop or self.stop:
            params["ls_stop"] = stop
        return params

    def _request(self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]) -> CoreRequest:
        if not isinstance(prompt, str):
            raise TypeError(f"PastaLLM takes a text prompt, got {type(prompt).__name__}; use ChatPasta for messages.")
        core_prompt = [{"role": "user", "content": prompt}] if self.chat_template else prompt
        return self._core_request(core_prompt, prompt, stop, kwargs)

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        if self.streaming:
            generations = []
            for prompt in prompts:
                request, finished = self._request(prompt, stop, dict(kwargs)), []
                pieces = []
                for text in self._stream_request(request, finished):
                    pieces.append(text)
                    if run_manager:
                        run_manager.on_llm_new_token(text, chunk=GenerationChunk(text=text))
                generations.append(self._streamed_usage(request, "".join(pieces), finished))
            return self._result(generations)
        requests = [self._request(prompt, stop, dict(kwargs)) for prompt in prompts]
        return self._result(self._generate_requests(requests))

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        if self.streaming:
            generations = []
            for prompt in prompts:
                pieces = [c.text async for c in self._astream(prompt, stop=stop, run_manager=run_manager, **kwargs)]
                request = self._request(prompt, stop, dict(kwargs))
                generations.append(await asyncio.to_thread(self._streamed_usage, request, "".join(pieces)))
            return self._result(generations)
        requests = [self._request(prompt, stop, dict(kwargs)) for prompt in prompts]
        return self._result(await asyncio.to_thread(self._generate_requests, requests))

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        request = self._request(prompt, stop, kwargs)
        for text in self._stream_request(request):
            chunk = GenerationChunk(text=text)
            if run_manager:
                run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        request = self._request(prompt, stop, kwargs)
        chunks = self._stream_request(request)  # checked here, before any thread starts
        async for text in iterate_in_thread(lambda: chunks):
            chunk = GenerationChunk(text=text)
            if run_manager:
                await run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk

    def _result(self, generations: list[Generation]) -> LLMResult:
        usage = {
            "prompt_tokens": sum(g.prompt_tokens for g in generations),
            "completion_tokens": sum(g.completion_tokens for g in generations),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return LLMResult(
            generations=[
                [
                    LCGeneration(
                        text=g.text,
                        generation_info={
                            "finish_reason": g.finish_reason,
                            "steered": g.steered,
                            "prompt_tokens": g.prompt_tokens,
                            "completion_tokens": g.completion_tokens,
                        },
                    )
                ]
                for g in generations
            ],
            llm_output={"model_name": self.model_name, "token_usage": usage},
        )
