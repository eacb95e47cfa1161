"""RemoteModel: a pasta-rag server (``pasta-rag serve``) used as if it were a PastaModel.

The LangChain and LlamaIndex classes take ``base_url=`` and then call this object where they would
call a loaded model: ``generate``, ``generate_batch``, ``stream``, ``astream``. It speaks OpenAI's
API through the ``openai`` client (``pip install pasta-rag[remote]``) and sends what OpenAI has no
field for in the server's own request fields: ``emphasis`` (substrings to emphasize) and ``pasta``
(the Steering). Marker characters of ``emphasize`` / ``format_docs`` travel inside the message text:
JSON keeps them, and the server strips them and steers.

What cannot travel is refused, never dropped: character ``spans`` of the final prompt (only the
server renders it) and head sets that are neither a shipped set's name nor explicit heads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .batching import Generation
from .errors import (
    ContextWindowError,
    EmphasisError,
    GrammarError,
    HeadSetError,
    PastaError,
    SteeringError,
    ToolError,
)
from .heads import PURPOSES, HeadSet
from .prompts import Prompt
from .settings import SamplingSettings, Steering, sampling_settings, split_options
from .streaming import AsyncTextStream, TextStream
from .tools import InvalidToolCall, ToolCall, history_calls

ERRORS_BY_CODE: dict[str, type[PastaError]] = {
    "context_length_exceeded": ContextWindowError,
    "emphasis_not_found": EmphasisError,
    "invalid_head_set": HeadSetError,
    "invalid_steering": SteeringError,
    "invalid_tool_message": ToolError,
    "invalid_schema": GrammarError,
}
"""The server's error codes -> the core error a local PastaModel raises for the same mistake."""

VLLM_FIELDS = ("top_k", "repetition_penalty", "min_tokens")
"""Decoding fields the server takes that the openai client has no argument for (sent as extra_body)."""


class RemoteModel:
    """A model served by ``pasta-rag serve`` at ``base_url`` (``http://host:8000/v1``).

    ``api_key``: the server's ``--api-key`` (default: ``$PASTA_RAG_API_KEY``; a server without one
    takes any). ``timeout`` (seconds) and ``max_retries`` mean what they mean in the ``openai`` client.
    ``model``: the served name (default: the one the server lists first).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | None = None,
        max_retries: int = 2,
        model: str | None = None,
    ):
        try:
            import openai
        except ImportError:
            raise ImportError("A remote pasta-rag model needs the openai client: pip install 'pasta-rag[remote]'.") \
                from None
        self._openai = openai
        self.base_url = base_url
        options: dict[str, Any] = {"max_retries": max_retries}
        if timeout is not None:
            options["timeout"] = timeout
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("PASTA_RAG_API_KEY") or
                                    "unused", **options)
        card = self._served(model)
        self.name: str = card.id
        self.context_window: int = (card.model_extra or {}).get("max_model_len") or 2048
        """The server's window (its ``/v1/models`` card says it as vLLM does, ``max_model_len``)."""

    def _served(self, model: str | None) -> Any:
        with self._errors():
            cards = list(self.client.models.list())
        for card in cards:
            if model is None or card.id == model:
                return card
        raise PastaError(f"The server at {self.base_url} serves {[c.id for c in cards]}, not {model!r}.")

    # --- what the integrations call ------------------------------------------------------------

    def resolve_steering(self, steering: Steering) -> Steering:
        """The call's steering as given: the server resolves unset fields against its model. Checked
        here only for what can travel (``steering_json``)."""
        steering_json(steering)
        return steering

    def generate(self, prompt: Prompt, **arguments: Any) -> Generation:
        """One answer from the server; the arguments are ``PastaModel.generate``'s."""
        return self._call(prompt, *self._request(arguments))

    def generate_batch(self, prompts: Sequence[Prompt], *, emphasis: Sequence[Any] | None = None,
                       spans: Sequence[Any] | None = None, **arguments: Any) -> list[Generation]:
        """Each prompt as its own request, sent at once: the server batches requests that arrive together."""
        if isinstance(prompts, str) or not prompts:
            raise PastaError("generate_batch takes a non-empty list of prompts; use generate for one prompt.")
        for what, values in (("emphasis", emphasis), ("spans", spans)):
            if values is not None and len(values) != len(prompts):
                raise PastaError(f"{what} must have one entry per prompt ({len(prompts)}), got {len(values)}.")
        requests = [(prompt, *self._request({**arguments, "emphasis": emphasis[i] if emphasis else None,
                                             "spans": spans[i] if spans else None}))
                    for i, prompt in enumerate(prompts)]
        with ThreadPoolExecutor(max_workers=min(16, len(requests))) as pool:
            return list(pool.map(lambda request: self._call(*request), requests))

    def stream(self, prompt: Prompt, **arguments: Any) -> TextStream:
        """The answer's text as the server streams it; ``stream.generation`` is set once it has ended."""
        body, settings = self._request(arguments)
        return TextStream(lambda sink: self._chunks(prompt, body, settings, sink))

    def astream(self, prompt: Prompt, **arguments: Any) -> AsyncTextStream:
        return AsyncTextStream(self.stream(prompt, **arguments))

    # --- requests -------------------------------------------------------------------------------

    def _request(self, arguments: Mapping[str, Any]) -> tuple[dict[str, Any], SamplingSettings]:
        """The OpenAI body of a call (less its prompt), and its decoding settings."""
        arguments = dict(arguments)
        emphasis, spans = arguments.pop("emphasis", None), arguments.pop("spans", None)
        if spans is not None:
            raise PastaError("Character spans cannot be sent to a server: only it renders the final prompt. "
                             "Mark the text with pasta_rag.emphasize(...) or pass emphasis=[substrings].")
        settings = arguments.pop("settings", None)
        tools = {name: arguments.pop(name) for name in ("tools", "tool_choice", "response_format")
                 if arguments.get(name) is not None}
        for name in ("tools", "tool_choice", "response_format"):
            arguments.pop(name, None)
        steering, rest = split_options(arguments.pop("steering", None), arguments)
        if settings is not None and rest:
            raise TypeError(f"Pass settings=SamplingSettings(...) or its fields {sorted(rest)}, not both.")
        settings = settings or sampling_settings(rest)
        sampling = sampling_body(settings)
        extra: dict[str, Any] = {name: sampling.pop(name) for name in VLLM_FIELDS if name in sampling}
        body: dict[str, Any] = {**sampling, **tools}
        if emphasis:
            extra["emphasis"] = emphasis if isinstance(emphasis, Mapping) else list(emphasis)
        pasta = steering_json(steering)
        if pasta:
            extra["pasta"] = pasta
        if extra:
            body["extra_body"] = extra
        return body, settings

    def _call(self, prompt: Prompt, body: dict[str, Any], settings: SamplingSettings) -> Generation:
        with self._errors():
            if isinstance(prompt, str):
                completion = self.client.completions.create(model=self.name, prompt=prompt, **body)
                choice = completion.choices[0]
                return _generation(choice.text, completion, choice.finish_reason, (), ())
            completion = self.client.chat.completions.create(model=self.name, messages=openai_messages(prompt),
                                                             **body)
        choice = completion.choices[0]
        message = choice.message
        calls = tuple(ToolCall(c.id, c.function.name, json.loads(c.function.arguments))
                      for c in message.tool_calls or ())
        invalid = tuple(InvalidToolCall(c["id"], c["name"], c["arguments"], c["error"])
                        for c in (message.model_extra or {}).get("invalid_tool_calls") or ())
        return _generation(message.content or "", completion, choice.finish_reason, calls, invalid)

    def _chunks(self, prompt: Prompt, body: dict[str, Any], settings: SamplingSettings,
                sink: TextStream) -> Iterator[str]:
        chat = not isinstance(prompt, str)
        with self._errors():
            if chat:
                stream = self.client.chat.completions.create(model=self.name, messages=openai_messages(prompt),
                                                             stream=True, stream_options={"include_usage": True},
                                                             **body)
            else:
                stream = self.client.completions.create(model=self.name, prompt=prompt, stream=True,
                                                        stream_options={"include_usage": True}, **body)
        pieces: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish, usage, report = "stop", None, None
        try:
            with self._errors():
                for chunk in stream:
                    usage = chunk.usage or usage
                    report = (chunk.model_extra or {}).get("pasta") or report
                    for choice in chunk.choices:
                        text = (choice.delta.content if chat else choice.text) or ""
                        if chat:
                            _collect_calls(calls, choice.delta.tool_calls or ())
                        finish = choice.finish_reason or finish
                        if text:
                            pieces.append(text)
                            yield text
        finally:
            stream.close()
        tool_calls = tuple(ToolCall(c["id"], c["name"], json.loads(c["arguments"] or "{}")) for c in calls.values())
        sink.generation = Generation(
            "".join(pieces), usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0,
            "stop" if finish == "tool_calls" else finish, bool(report and report.get("steered")), tool_calls)

    def _errors(self) -> _ServerErrors:
        return _ServerErrors(self)


class _ServerErrors:
    """The server's refusals as the core errors a local model raises; a failed connection says where."""

    def __init__(self, remote: RemoteModel):
        self.remote = remote

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: Any) -> bool:
        openai = self.remote._openai
        if isinstance(error, openai.APIStatusError):
            body = error.body if isinstance(error.body, Mapping) else {}
            message = body.get("message") or str(error)
            raise ERRORS_BY_CODE.get(body.get("code") or "", PastaError)(
                f"The pasta-rag server at {self.remote.base_url} refused the request ({error.status_code}): "
                f"{message}") from None
        if isinstance(error, openai.APIConnectionError):
            raise PastaError(f"Could not reach the pasta-rag server at {self.remote.base_url}: {error}. Is "
                             "`pasta-rag serve` running there?") from None
        return False


def _collect_calls(calls: dict[int, dict[str, Any]], pieces: Sequence[Any]) -> None:
    for piece in pieces:
        call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
        call["id"] = piece.id or call["id"]
        if piece.function is not None:
            call["name"] += piece.function.name or ""
            call["arguments"] += piece.function.arguments or ""


def _generation(text: str, completion: Any, finish: str | None, calls: tuple[ToolCall, ...],
                invalid: tuple[InvalidToolCall, ...]) -> Generation:
    report = (completion.model_extra or {}).get("pasta") or {}
    usage = completion.usage
    return Generation(text, usage.prompt_tokens, usage.completion_tokens,
                      "stop" if finish in (None, "tool_calls") else finish, bool(report.get("steered")),
                      calls, invalid)


# --- the pieces of a request -----------------------------------------------------------------

def sampling_body(settings: SamplingSettings) -> dict[str, Any]:
    """SamplingSettings as OpenAI's fields and vLLM's (``top_k``, ``repetition_penalty``, ``min_tokens``,
    which the server takes; ``_request`` sends those in ``extra_body``); defaults are left out."""
    body: dict[str, Any] = {"max_tokens": settings.max_new_tokens, "temperature": settings.temperature}
    if settings.top_p != 1:
        body["top_p"] = settings.top_p
    if settings.stop:
        body["stop"] = list(settings.stop)
    if settings.seed is not None:
        body["seed"] = settings.seed
    extras = {"top_k": settings.top_k, "repetition_penalty": settings.repetition_penalty if
              settings.repetition_penalty != 1 else None, "min_tokens": settings.min_new_tokens or None}
    body.update({name: value for name, value in extras.items() if value is not None})
    return body


def steering_json(steering: Steering) -> dict[str, Any]:
    """A Steering as the server's ``pasta`` field: the fields set, head sets as ``{"layer": [heads]}``."""
    given = steering.given()
    result: dict[str, Any] = {}
    if "heads" in given:
        heads, recorded = _heads_json(given.pop("heads"))
        result["heads"] = heads
        for name, value in recorded.items():  # what a head set's file records, unless the call says otherwise
            given.setdefault(name, value)
    if "enabled" in given:
        result["steer"] = given.pop("enabled")
    groups = given.pop("groups", None)
    result.update(given)
    if groups:
        result["groups"] = {name: steering_json(group) for name, group in groups.items()}
    return result


def _heads_json(heads: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(heads, str) and heads in PURPOSES:
        return heads, {}
    if isinstance(heads, (str, os.PathLike)):
        heads = HeadSet.load(Path(heads))  # the client's file: the server never reads the client's paths
    if isinstance(heads, list):
        return heads, {}
    head_set = heads if isinstance(heads, HeadSet) else HeadSet.from_json(heads)
    recorded = Steering.from_head_set(head_set).given()
    recorded.pop("heads")
    if head_set.all_heads_of and head_set.heads:
        raise SteeringError("A head set of whole layers and single heads cannot be sent to a server; resolve it "
                            "against the model first (HeadSet.resolve) or send one kind.")
    if head_set.all_heads_of:
        return sorted(head_set.all_heads_of), recorded
    return {str(layer): sorted(layer_heads) for layer, layer_heads in sorted(head_set.heads.items())}, recorded


def openai_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The core's chat messages in OpenAI's request shape (earlier tool calls with JSON-string arguments)."""
    converted = []
    for message in messages:
        item = {key: message[key] for key in ("role", "content", "tool_call_id", "name") if message.get(key)
                is not None}
        item.setdefault("content", message.get("content"))
        if message.get("tool_calls"):
            item["tool_calls"] = [{"id": call.id, "type": "function",
                                   "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}
                                  for call in history_calls(message)]
        converted.append(item)
    return converted

