"""PastaLLM's LLM interface on the tiny random model: every method, streaming, async, stop strings, errors."""

from __future__ import annotations

import asyncio
import dataclasses
import warnings

import llama_index.core
import pytest
from llama_index.core import Settings
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock
from llama_index.core.callbacks import CallbackManager, LlamaDebugHandler
from llama_index.core.callbacks.schema import CBEventType
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.llms import LLM
from llama_index.core.prompts import PromptTemplate
from llama_index.llms.pasta import PastaLLM, load_shared_model

from pasta_rag import EMPHASIS_START, PastaModel, Steering, emphasize

MESSAGES = [
    ChatMessage(role=MessageRole.SYSTEM, content="Answer briefly."),
    ChatMessage(role=MessageRole.USER, content="Where is the tower?"),
]


def make_llm(core: PastaModel, **kwargs) -> PastaLLM:
    kwargs.setdefault("max_new_tokens", 8)
    return PastaLLM(core, **kwargs)


async def collect(agen) -> list:
    return [item async for item in agen]


def call_every_path(llm: PastaLLM, prompt: str, chat: list[ChatMessage]) -> None:
    """complete, chat, their streams and the four async twins: the 8 ways a call reaches the core, in that order."""
    llm.complete(prompt)
    llm.chat(chat)
    "".join(c.delta for c in llm.stream_complete(prompt))
    "".join(c.delta for c in llm.stream_chat(chat))

    async def run() -> None:
        await llm.acomplete(prompt)
        await llm.achat(chat)
        await collect(await llm.astream_complete(prompt))
        await collect(await llm.astream_chat(chat))

    asyncio.run(run())


def test_is_a_llama_index_llm_with_metadata(tiny_core):
    llm = make_llm(tiny_core, context_window=1000)
    assert isinstance(llm, LLM)
    assert llm.pasta_model is tiny_core
    meta = llm.metadata
    assert (meta.context_window, meta.num_output, meta.is_chat_model, meta.model_name) == (1000, 8, True, "tiny-llama")
    assert meta.is_function_calling_model
    assert make_llm(tiny_core).metadata.context_window == tiny_core.context_window == 4096
    assert PastaLLM.class_name() == "PastaLLM"
    assert llm.to_dict()["max_new_tokens"] == 8


def test_is_chat_model_follows_the_chat_template():
    from li_pasta_support import tiny_pasta_model

    assert make_llm(tiny_pasta_model(chat_template=False)).metadata.is_chat_model is False
    assert make_llm(tiny_pasta_model(), is_chat_model=False).metadata.is_chat_model is False


def test_complete_and_chat_use_the_chat_template(tiny_core, spy):
    llm = make_llm(tiny_core, system_prompt="Be brief.")
    completion = llm.complete("Where is the tower?")
    assert completion.text and completion.raw["usage"]["completion_tokens"] == 8
    assert completion.raw["finish_reason"] == "length" and completion.raw["steered"] is False
    assert spy.calls[-1].prompt == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is the tower?"},
    ]
    llm.complete("raw text", formatted=True)
    assert spy.calls[-1].prompt == "raw text"
    chat = llm.chat(MESSAGES)
    assert chat.message.role == MessageRole.ASSISTANT and chat.message.content
    assert spy.calls[-1].text.startswith("<s>system: Answer briefly.\n<s>user: Where is the tower?")
    assert chat.raw["usage"]["prompt_tokens"] == len(tiny_core.tokenizer(spy.calls[-1].text, add_special_tokens=False)["input_ids"])


def test_without_chat_template_messages_become_text(spy):
    from li_pasta_support import CoreSpy, tiny_pasta_model

    core = tiny_pasta_model(chat_template=False)
    spy = CoreSpy(core)
    llm = make_llm(core)
    llm.chat(MESSAGES)
    assert isinstance(spy.calls[-1].prompt, str) and "Where is the tower?" in spy.calls[-1].prompt
    llm.complete("Q: where?")
    assert spy.calls[-1].prompt == "Q: where?"


def test_streaming_equals_non_streaming(tiny_core):
    llm = make_llm(tiny_core, max_new_tokens=12)
    text = llm.complete("hello").text
    chunks = list(llm.stream_complete("hello"))
    assert "".join(c.delta for c in chunks) == text == chunks[-1].text
    chat_text = llm.chat(MESSAGES).message.content
    chat_chunks = list(llm.stream_chat(MESSAGES))
    assert "".join(c.delta for c in chat_chunks) == chat_text == chat_chunks[-1].message.content


def test_async_variants_equal_sync(tiny_core):
    llm = make_llm(tiny_core)
    text, chat_text = llm.complete("hello").text, llm.chat(MESSAGES).message.content

    async def run():
        completion = await llm.acomplete("hello")
        chat = await llm.achat(MESSAGES)
        stream = await collect(await llm.astream_complete("hello"))
        chat_stream = await collect(await llm.astream_chat(MESSAGES))
        return completion, chat, stream, chat_stream

    completion, chat, stream, chat_stream = asyncio.run(run())
    assert completion.text == text == "".join(c.delta for c in stream)
    assert chat.message.content == chat_text == chat_stream[-1].message.content


def test_closing_an_async_stream_early(tiny_core):
    llm = make_llm(tiny_core, max_new_tokens=30)

    async def run():
        stream = await llm.astream_complete("hello")
        first = await stream.__anext__()
        await stream.aclose()
        return first

    assert asyncio.run(run()).delta


def test_stop_strings_field_and_per_call(tiny_core):
    llm = make_llm(tiny_core, max_new_tokens=20)
    full = llm.complete("hello").text
    stop = full[6:8]
    expected = full[: full.find(stop)]
    assert llm.complete("hello", stop=[stop]).text == expected
    assert llm.complete("hello", stop=stop).text == expected  # a single string is accepted
    with_field = make_llm(tiny_core, max_new_tokens=20, stop=[stop])
    response = with_field.complete("hello")
    assert response.text == expected and response.raw["finish_reason"] == "stop"
    assert "".join(c.delta for c in with_field.stream_complete("hello")) == expected
    chat_full = llm.chat(MESSAGES).message.content
    chat_stop = chat_full[5:7]
    assert llm.chat(MESSAGES, stop=[chat_stop]).message.content == chat_full[: chat_full.find(chat_stop)]
    assert "".join(c.delta for c in llm.stream_chat(MESSAGES, stop=[chat_stop])) == chat_full[
        : chat_full.find(chat_stop)
    ]


def test_per_call_options_reach_the_core(tiny_core, spy):
    llm = make_llm(tiny_core)
    llm.complete("hello", max_new_tokens=3, temperature=0.7, top_k=5, seed=1, alpha=0.1)
    kwargs = spy.calls[-1].kwargs
    assert (kwargs["max_new_tokens"], kwargs["temperature"], kwargs["top_k"], kwargs["seed"]) == (3, 0.7, 5, 1)
    assert kwargs["alpha"] == 0.1


def test_steer_generated_field_and_option_reach_the_core(tiny_core, spy):
    marked = f"Context: {emphasize('The tower is in Rome.')} Where is it?"
    chat = [ChatMessage(role=MessageRole.USER, content=marked)]
    llm = make_llm(tiny_core, steer_generated=True)
    assert llm.to_dict()["steer_generated"] is True
    call_every_path(llm, marked, chat)
    assert [call.kwargs["steer_generated"] for call in spy.calls] == [True] * 8
    steered = spy.calls[0].output
    assert [call.output for call in spy.calls[::2]] == [steered] * 4  # complete, and its stream / async twins
    plain = make_llm(tiny_core)
    plain.complete(marked)
    assert spy.calls[-1].kwargs["steer_generated"] is None  # the model's (or head set's) choice
    plain.complete(marked, steer_generated=True)
    assert spy.calls[-1].kwargs["steer_generated"] is True and spy.calls[-1].output == steered
    llm.chat(chat, steer_generated=False)
    assert spy.calls[-1].kwargs["steer_generated"] is False
    with pytest.raises(ValueError, match="steer_generated must be True, False or None"):
        plain.complete(marked, steer_generated="yes")
    with pytest.raises(ValueError, match="steer_generated"):
        make_llm(tiny_core, steer_generated="yes")  # a lax bool would take "yes" as True


def test_generated_alpha_field_and_option_reach_the_core(tiny_core, spy):
    marked = f"Context: {emphasize('The tower is in Rome.')} Where is it?"
    chat = [ChatMessage(role=MessageRole.USER, content=marked)]
    llm = make_llm(tiny_core, steer_generated=True, generated_alpha=1e-4)
    assert llm.to_dict()["generated_alpha"] == 1e-4
    call_every_path(llm, marked, chat)
    assert [call.kwargs["generated_alpha"] for call in spy.calls] == [1e-4] * 8
    assert [call.output for call in spy.calls[::2]] == [spy.calls[0].output] * 4  # complete and its twins
    plain = make_llm(tiny_core, steer_generated=True)
    plain.complete(marked)
    assert spy.calls[-1].kwargs["generated_alpha"] is None  # the model's (or head set's) choice
    plain.complete(marked, generated_alpha=1e-4)
    assert spy.calls[-1].kwargs["generated_alpha"] == 1e-4 and spy.calls[-1].output == spy.calls[0].output
    with pytest.raises(ValueError, match="generated_alpha must be a number > 0"):
        plain.complete(marked, generated_alpha=0)
    with pytest.raises(ValueError, match="generated_alpha"):
        make_llm(tiny_core, generated_alpha=-1.0)
    for name in ("alpha", "generated_alpha"):  # a lax float would read True as 1.0 and "0.5" as 0.5
        for bad in (True, "0.5"):
            with pytest.raises(ValueError, match=name):
                make_llm(tiny_core, **{name: bad})


def test_unsteered_passthrough_when_nothing_is_emphasized(tiny_core, spy):
    llm = make_llm(tiny_core)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the core warns when asked to steer nothing: we must not ask
        plain = llm.complete("The tower is in Rome. Where is it?")
    assert spy.calls[-1].kwargs["steer"] is False and plain.raw["steered"] is False
    # ... and it is exactly the plain model
    assert plain.text == make_llm(tiny_core, steer=False).complete("The tower is in Rome. Where is it?").text


def test_marked_prompts_are_steered_and_change_the_answer(tiny_core, spy):
    llm = make_llm(tiny_core)
    marked = llm.complete(f"Context: {emphasize('The tower is in Rome.')} Where is it?")
    call = spy.calls[-1]
    assert call.kwargs["steer"] is True and marked.raw["steered"] is True
    assert call.emphasized == ["The tower is in Rome."] and EMPHASIS_START not in call.text
    plain = make_llm(tiny_core, steer=False).complete(f"Context: {emphasize('The tower is in Rome.')} Where is it?")
    assert plain.raw["steered"] is False
    assert marked.text != plain.text  # steering the random tiny model moves its greedy answer
    by_substring = llm.complete("Context: The tower is in Rome. Where is it?", emphasis="The tower is in Rome.")
    assert by_substring.raw["steered"] is True and spy.calls[-1].emphasized == ["The tower is in Rome."]


def test_instruction_pinning(tiny_core, spy):
    llm = make_llm(tiny_core, emphasize_system_prompt=True, system_prompt="Always answer in French.")
    llm.chat(MESSAGES)
    assert spy.calls[-1].pinned == ["Answer briefly."] and spy.calls[-1].kwargs["steer"] is True
    assert spy.calls[-1].emphasized == []  # pinned text is the instructions group, not context
    llm.complete("Where?")
    assert spy.calls[-1].pinned == ["Always answer in French."]
    llm.predict(PromptTemplate("Question: {q}"), q="Where?")  # system_prompt added by LlamaIndex itself
    assert "Always answer in French." in spy.calls[-1].pinned
    make_llm(tiny_core).chat(MESSAGES)
    assert spy.calls[-1].spans == [] and spy.calls[-1].groups == {}


def test_callbacks_and_instrumentation_events(tiny_core):
    debug = LlamaDebugHandler()
    llm = make_llm(tiny_core, callback_manager=CallbackManager([debug]))

    names: list[str] = []

    class Recorder(BaseEventHandler):

        @classmethod
        def class_name(cls) -> str:
            return "Recorder"

        def handle(self, event, **kwargs) -> None:
            names.append(event.class_name())

    recorder = Recorder()
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(recorder)
    try:
        llm.complete("hello")
        list(llm.stream_chat(MESSAGES))
        asyncio.run(llm.achat(MESSAGES))
    finally:
        dispatcher.event_handlers.remove(recorder)
    pairs = debug.get_event_pairs(CBEventType.LLM)
    assert len(pairs) == 3 and all(len(pair) == 2 for pair in pairs)
    assert names.count("LLMCompletionStartEvent") == 1 and names.count("LLMCompletionEndEvent") == 1
    assert names.count("LLMChatStartEvent") == 2 and names.count("LLMChatEndEvent") == 2
    assert "LLMChatInProgressEvent" in names


def test_bad_input_gets_clear_errors(tiny_core):
    llm = make_llm(tiny_core)
    with pytest.raises(TypeError, match="unexpected keyword.*max_tokens"):
        llm.complete("hello", max_tokens=5)
    with pytest.raises(TypeError, match="non-empty sequence of ChatMessage"):
        llm.chat([])
    with pytest.raises(TypeError, match="ChatMessage objects"):
        llm.chat([{"role": "user", "content": "hi"}])
    with pytest.raises(TypeError, match="prompt as a string"):
        llm.complete(MESSAGES)
    image = ChatMessage(role="user", blocks=[TextBlock(text="see"), ImageBlock(url="http://example.com/x.png")])
    with pytest.raises(ValueError, match="text only"):
        llm.chat([image])
    with pytest.raises(ValueError, match="non-empty strings"):
        llm.complete("hello", stop=[""])
    with pytest.raises(ValueError, match="larger than"):
        PastaLLM(tiny_core, context_window=10**6)
    with pytest.raises(TypeError, match="PastaModel, a model name or a path"):
        PastaLLM(42)
    with pytest.raises(ValueError):
        PastaLLM(tiny_core, temperature=-1)
    from pasta_rag import EmphasisError

    with pytest.raises(EmphasisError, match="never closed"):
        llm.complete(f"{EMPHASIS_START}unclosed")


def test_sets_the_global_tokenizer_only_when_unset(tiny_core):
    llama_index.core.global_tokenizer = None
    make_llm(tiny_core)
    assert Settings.tokenizer("abc") == tiny_core.tokenizer.encode("abc", add_special_tokens=False)
    mine = lambda text: [0]
    Settings.tokenizer = mine
    make_llm(tiny_core)
    assert Settings.tokenizer is mine
    llama_index.core.global_tokenizer = None
    make_llm(tiny_core, set_global_tokenizer=False)
    assert llama_index.core.global_tokenizer is None


def test_models_loaded_by_name_are_shared(monkeypatch, tiny_core):
    loads = []

    def fake_from_pretrained(source, **kwargs):
        loads.append((source, kwargs))
        return tiny_core

    monkeypatch.setattr(PastaModel, "from_pretrained", staticmethod(fake_from_pretrained))
    monkeypatch.setattr(PastaModel, "_shared", {})  # the core's process-wide cache, empty for this test only
    first = PastaLLM("some-model-dir", model_kwargs={"dtype": "float32"})
    second = PastaLLM(model_name="some-model-dir", model_kwargs={"dtype": "float32"})
    assert first.pasta_model is second.pasta_model is tiny_core and len(loads) == 1
    assert load_shared_model("some-model-dir", dtype="float32") is tiny_core and len(loads) == 1
    assert first.model_name == "tiny-llama"


def test_every_steering_field_reaches_the_core(tiny_core, monkeypatch):
    """The steering field, a per-call steering= and a per-call keyword: each Steering field (a new one
    too, with no edit in the integration) arrives in the Steering the core receives, on every path."""
    from tiny import STEERING_SAMPLES  # one non-default value per field, shared with the core and LangChain tests

    assert set(STEERING_SAMPLES) == {f.name for f in dataclasses.fields(Steering)}, "a Steering field has no sample"
    received: list[Steering] = []
    generate_batch, stream = tiny_core.generate_batch, tiny_core.stream
    monkeypatch.setattr(tiny_core, "generate_batch",
                        lambda p, **k: received.append(k["steering"]) or generate_batch(p, **k))
    monkeypatch.setattr(tiny_core, "stream", lambda p, **k: received.append(k["steering"]) or stream(p, **k))
    marked = f"Context: {emphasize('The tower is in Rome.')} Where is it?"
    chat = [ChatMessage(role=MessageRole.USER, content=marked)]
    for field in dataclasses.fields(Steering):
        steering = Steering(**{field.name: STEERING_SAMPLES[field.name]})
        by_field = make_llm(tiny_core, max_new_tokens=2, steering=steering)
        by_field.complete(marked)
        "".join(c.delta for c in by_field.stream_chat(chat))
        asyncio.run(collect_started(by_field.astream_complete(marked)))  # the core's astream calls stream
        per_call = make_llm(tiny_core, max_new_tokens=2)
        per_call.chat(chat, steering=steering)
        per_call.complete(marked, **{field.name: STEERING_SAMPLES[field.name]})  # every field is a call option
        assert [getattr(s, field.name) for s in received] == [getattr(steering, field.name)] * 5, field.name
        received.clear()


async def collect_started(started) -> list:
    """The items of an async stream that an ``astream_*`` coroutine returns."""
    return await collect(await started)


def test_steering_field_survives_to_dict_and_is_checked_by_the_core(tiny_core):
    llm = make_llm(tiny_core, steering=Steering(alpha=0.05, steer_generated=True))
    assert llm.to_dict()["steering"] == {"alpha": 0.05, "steer_generated": True}
    assert PastaLLM.from_dict(llm.to_dict(), model=tiny_core).steering == llm.steering
    with pytest.raises(ValueError, match="steering must be a pasta_rag.Steering"):
        make_llm(tiny_core, steering="context")
    with pytest.raises(ValueError, match="alpha must be > 0"):
        make_llm(tiny_core).complete("hello", steering=Steering(alpha=0.05), alpha=-1.0)


def test_select_defaults_to_the_relevant_passages_and_the_field_overrides_it(tiny_core, spy):
    """A chain emphasizes every retrieved passage; the default steers only those that answer the question."""
    prompt = emphasize("The tower is in Rome.") + " Where is the tower?"
    make_llm(tiny_core, max_new_tokens=2).complete(prompt)
    make_llm(tiny_core, max_new_tokens=2, select="all").complete(prompt)
    make_llm(tiny_core, max_new_tokens=2, select="all").complete(prompt, select="relevant")
    assert [call.kwargs["select"] for call in spy.calls] == ["relevant", "all", "relevant"]
