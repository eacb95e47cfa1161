"""``create_app(model)``: the steered model behind OpenAI's HTTP API, for any OpenAI client.

One PastaModel serves every request; each request steers what its own messages emphasize
(marker characters survive JSON) or what its ``emphasis`` / ``pasta`` fields say.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from ..batching import Generation
from ..engine import PastaModel
from .answers import assistant_message, finish_reason
from .auth import bearer_check
from .batcher import Batcher
from .calls import CoreCall, chat_call, completion_call
from .errors import APIError, install_handlers
from .events import Chunk, chat_chunks, completion_chunks, sse
from .limits import BodyLimit
from .playground import playground_router
from .schemas import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
    Usage,
)

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
"""Room for a context window of text many times over; far below what would strain the server's memory."""


def create_app(
    model: PastaModel,
    *,
    model_id: str | None = None,
    aliases: Sequence[str] = (),
    api_key: str | None = None,
    batch_window_ms: float = 10.0,
    max_batch_size: int = 16,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The app serving ``model`` as ``model_id`` (default: its name); ``aliases`` are other names it answers to.

    ``api_key``: required as a bearer token on /v1 (GET /health stays open for probes).
    Non-streaming requests arriving within ``batch_window_ms`` of each other share one
    ``generate_batch`` call of at most ``max_batch_size`` prompts.
    """
    served = model_id or model.name
    names = {served, *aliases}
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = Batcher(model, batch_window_ms / 1000, max_batch_size)
        yield
        await app.state.batcher.close()

    app = FastAPI(title="pasta-rag", summary="A PASTA-steered local model behind the OpenAI API.", lifespan=lifespan)
    app.state.model = model
    install_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    def check_model(name: str) -> None:
        if name not in names:
            raise APIError(404, f"The model {name!r} does not exist here: this server serves {served!r}"
                           f"{f' (also as {sorted(set(aliases))})' if aliases else ''}. See GET /v1/models.",
                           type="not_found_error", param="model", code="model_not_found")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(bearer_check(api_key))])

    @v1.get("/models")
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=served, created=created, max_model_len=model.context_window)])

    @v1.get("/models/{name}")
    async def get_model(name: str) -> ModelCard:
        check_model(name)
        return ModelCard(id=served, created=created, max_model_len=model.context_window)

    @v1.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> ChatCompletion | StreamingResponse:
        check_model(body.model)
        call = await run_in_threadpool(chat_call, model, body)  # tokenizing a long prompt must not stall the loop
        completion_id, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return await run_in_threadpool(_streamed, model, call, body, chat_chunks(completion_id, now, served))
        answer = await request.app.state.batcher.generate(call)
        return ChatCompletion(id=completion_id, created=now, model=served, usage=_usage(answer), pasta=call.report,
                              choices=[ChatChoice(message=assistant_message(answer),
                                                  finish_reason=finish_reason(answer))])

    @v1.post("/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Completion | StreamingResponse:
        check_model(body.model)
        call = await run_in_threadpool(completion_call, model, body)
        completion_id, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return await run_in_threadpool(_streamed, model, call, body,
                                           completion_chunks(completion_id, now, served))
        answer = await request.app.state.batcher.generate(call)
        return Completion(id=completion_id, created=now, model=served, usage=_usage(answer), pasta=call.report,
                          choices=[CompletionChoice(text=answer.text, finish_reason=answer.finish_reason)])

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": served}

    app.include_router(v1)
    app.include_router(playground_router())
    return app


def _streamed(model: PastaModel, call: CoreCall, body: ChatCompletionRequest | CompletionRequest,
              chunk: Chunk) -> StreamingResponse:
    stream = model.astream(call.prompt, **call.arguments())  # prepares the prompt again: keep it off the loop
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return StreamingResponse(sse(stream, call, chunk, include_usage), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def _usage(answer: Generation) -> Usage:
    return Usage(prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                 total_tokens=answer.prompt_tokens + answer.completion_tokens)
