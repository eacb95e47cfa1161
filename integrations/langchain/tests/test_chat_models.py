"""ChatPasta on the core's tiny random model: every path gives the core's own output for the same prompt."""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_pasta import ChatPasta, emphasize, format_docs, load_engine, pin
from lc_pasta_support import sent
from pydantic import ValidationError

from pasta_rag import EmphasisError, PastaModel
from pasta_rag.emphasis import INSTRUCTIONS

MESSAGES = [SystemMessage("Be brief."), HumanMessage("Where is the tower?")]
CORE = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is the tower?"}]


@pytest.fixture
def chat(tiny_engine) -> ChatPasta:
    return ChatPasta(model=tiny_engine, max_tokens=6)


def core_text(engine: PastaModel, prompt: Any, **kwargs: Any) -> str:
    kwargs.setdefault("max_new_tokens", 6)
    return engine.generate(prompt, **kwargs).text


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.starts = 0
        self.ends = 0

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.starts += 1

    def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        self.ends += 1


# --- unsteered passthrough and the three ways emphasis arrives ------------------------------


def test_no_emphasis_is_the_plain_model_and_warns_nothing(chat, tiny_engine):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        answer = chat.invoke(MESSAGES)
    assert answer.content == core_text(tiny_engine, CORE, steer=False)
    assert answer.response_metadata["steered"] is False


def test_inline_markers_steer(chat, tiny_engine):
    marked = [SystemMessage("Be brief."), HumanMessage(f"Context: {emphasize('The tower is in Rome.')} Where?")]
    core = [CORE[0], {"role": "user", "content": f"Context: {emphasize('The tower is in Rome.')} Where?"}]
    answer = chat.invoke(marked)
    assert answer.response_metadata["steered"] is True
    assert answer.content == core_text(tiny_engine, core)
    assert answer.content != core_text(tiny_engine, core, steer=False)  # the steering changes this model's answer


def test_steer_false_field_runs_the_plain_model_on_marked_text(tiny_engine):
    marked = [HumanMessage(f"Context: {emphasize('The tower is in Rome.')} Where?")]
    plain = ChatPasta(model=tiny_engine, max_tokens=6, steer=False).invoke(marked)
    assert plain.response_metadata["steered"] is False
    assert plain.content == core_text(tiny_engine, [{"role": "user", "content": marked[0].content}], steer=False)


def test_emphasis_call_argument_and_bind(chat, tiny_engine):
    expected = core_text(tiny_engine, CORE, emphasis=["the tower"])
    assert chat.invoke(MESSAGES, emphasis=["the tower"]).content == expected
    assert chat.bind(emphasis=["the tower"]).invoke(MESSAGES).content == expected
    assert chat.invoke(MESSAGES, emphasis=["the tower"]).response_metadata["steered"] is True


def test_missing_emphasis_substring_is_a_clear_error(chat):
    with pytest.raises(EmphasisError, match="does not occur in the prompt"):
        chat.invoke(MESSAGES, emphasis=["not in the prompt"])


def test_pinned_message(chat, tiny_engine):
    expected = core_text(tiny_engine, [CORE[0], {"role": "user", "content": emphasize(CORE[1]["content"], INSTRUCTIONS)}])
    assert chat.invoke([MESSAGES[0], pin(MESSAGES[1])]).content == expected
    flagged = HumanMessage(MESSAGES[1].content, additional_kwargs={"pasta_emphasis": True})
    assert chat.invoke([MESSAGES[0], flagged]).content == expected


def test_pinned_substrings_of_a_message(chat, tiny_engine):
    pinned = {"role": "user", "content": f"Where is the {emphasize('tower', INSTRUCTIONS)}?"}
    expected = core_text(tiny_engine, [CORE[0], pinned])
    assert chat.invoke([MESSAGES[0], pin(MESSAGES[1], ["tower"])]).content == expected
    assert expected != core_text(tiny_engine, CORE, emphasis=["tower"])  # the instructions heads, not the context ones
    with pytest.raises(EmphasisError):
        chat.invoke([MESSAGES[0], pin(MESSAGES[1], ["absent"])])


def test_pin_system_emphasizes_system_messages_on_every_turn(tiny_engine):
    chat = ChatPasta(model=tiny_engine, max_tokens=6, pin_system=True)
    history: list = [SystemMessage("Answer in one word.")]
    for turn in ("first question", "second question"):
        history.append(HumanMessage(turn))
        core = [{"role": "system", "content": emphasize("Answer in one word.", INSTRUCTIONS)}] + [
            {"role": "user" if isinstance(m, HumanMessage) else "assistant", "content": m.content}
            for m in history[1:]
        ]
        answer = chat.invoke(history)
        assert answer.response_metadata["steered"] is True
        assert answer.content == core_text(tiny_engine, core)
        history.append(AIMessage(answer.content))


def test_a_pinned_rag_prompt_keeps_its_documents_out_of_the_instructions_group(tiny_engine):
    chat = ChatPasta(model=tiny_engine, max_tokens=6, pin_system=True)
    docs = format_docs([Document(page_content="The tower is in Rome."), Document(page_content="Paris is big.")])
    prompt = ChatPromptTemplate.from_messages([("system", "Answer from these documents:\n{context}"), ("human", "{q}")])
    answer = (prompt | chat).invoke({"context": docs, "q": "Where is the tower?"})
    system = (f"{emphasize('Answer from these documents:', INSTRUCTIONS)}\n"
              f"{emphasize('The tower is in Rome.')}\n\n{emphasize('Paris is big.')}")
    core = [{"role": "system", "content": system}, {"role": "user", "content": "Where is the tower?"}]
    assert answer.content == core_text(tiny_engine, core, select="relevant")


def test_markers_survive_a_prompt_template(chat, tiny_engine):
    prompt = ChatPromptTemplate.from_messages([("system", "Use the context."), ("human", "{context}\n{question}")])
    chain = {"context": lambda q: format_docs([Document(page_content="The tower is in Rome.")]), "question": lambda q: q}
    answer = (chain | prompt | chat).invoke("Where?")
    core = [
        {"role": "system", "content": "Use the context."},
        {"role": "user", "content": emphasize("The tower is in Rome.") + "\nWhere?"},
    ]
    assert answer.response_metadata["steered"] is True
    assert answer.content == core_text(tiny_engine, core)


# --- streaming, stop strings, callbacks, usage ----------------------------------------------


def test_stream_joins_to_invoke_and_ends_with_usage(chat):
    chunks = list(chat.stream(MESSAGES))
    assert "".join(c.content for c in chunks) == chat.invoke(MESSAGES).content
    assert chunks[-1].chunk_position == "last"
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert full.usage_metadata["input_tokens"] == chat.invoke(MESSAGES).usage_metadata["input_tokens"]
    assert full.response_metadata["model_name"] == chat.model_name


def test_multi_token_stop_strings_everywhere(tiny_engine):
    chat = ChatPasta(model=tiny_engine, max_tokens=12)
    full = chat.invoke(MESSAGES).content
    stop = full[4:8]  # several characters: several tokens of the char tokenizer
    assert len(stop) > 1 and full.find(stop) > 0
    expected = full[: full.find(stop)]
    assert chat.invoke(MESSAGES, stop=[stop]).content == expected
    assert "".join(c.content for c in chat.stream(MESSAGES, stop=[stop])) == expected
    assert ChatPasta(model=tiny_engine, max_tokens=12, stop=[stop]).invoke(MESSAGES).content == expected
    assert [m.content for m in chat.batch([MESSAGES, MESSAGES], stop=[stop])] == [expected, expected]
    assert asyncio.run(chat.ainvoke(MESSAGES, stop=[stop])).content == expected

    async def astream() -> str:
        return "".join([c.content async for c in chat.astream(MESSAGES, stop=[stop])])

    assert asyncio.run(astream()) == expected
    assert chat.invoke(MESSAGES, stop=[stop]).response_metadata["finish_reason"] == "stop"


def test_streaming_field_sends_each_token_to_callbacks(tiny_engine):
    recorder = Recorder()
    chat = ChatPasta(model=tiny_engine, max_tokens=6, streaming=True)
    answer = chat.invoke(MESSAGES, config={"callbacks": [recorder]})
    assert len([t for t in recorder.tokens if t]) >= 2
    assert "".join(recorder.tokens) == answer.content == core_text(tiny_engine, CORE, steer=False)


def test_usage_metadata_counts_tokens(chat, tiny_engine):
    answer = chat.invoke(MESSAGES)
    generation = tiny_engine.generate(CORE, steer=False, max_new_tokens=6)
    assert answer.usage_metadata == {
        "input_tokens": generation.prompt_tokens,
        "output_tokens": generation.completion_tokens,
        "total_tokens": generation.prompt_tokens + generation.completion_tokens,
    }
    assert answer.response_metadata["finish_reason"] == "length"


# --- batching -------------------------------------------------------------------------------


def spy_batches(engine: PastaModel, monkeypatch) -> list[int]:
    sizes: list[int] = []
    original = engine.generate_batch

    def generate_batch(prompts, **kwargs):
        sizes.append(len(prompts))
        return original(prompts, **kwargs)

    monkeypatch.setattr(engine, "generate_batch", generate_batch)
    return sizes


def test_batch_runs_one_padded_batch_with_a_run_per_input(chat, tiny_engine, monkeypatch):
    inputs = ["Hello", [pin(HumanMessage("Where is the tower?"))], "A much longer question than the others?"]
    expected = tiny_engine.generate_batch(
        [
            [{"role": "user", "content": "Hello"}],
            [{"role": "user", "content": emphasize("Where is the tower?", INSTRUCTIONS)}],
            [{"role": "user", "content": inputs[2]}],
        ],
        steer=True,
        max_new_tokens=6,
    )
    sizes = spy_batches(tiny_engine, monkeypatch)
    recorder = Recorder()
    answers = chat.batch(inputs, config={"callbacks": [recorder]})
    assert sizes == [3]
    assert [a.content for a in answers] == [g.text for g in expected]
    assert [a.response_metadata["steered"] for a in answers] == [False, True, False]
    assert recorder.starts == recorder.ends == 3


def test_abatch_runs_one_padded_batch(chat, tiny_engine, monkeypatch):
    expected = [m.content for m in chat.batch(["Hello", "Hi there"])]
    sizes = spy_batches(tiny_engine, monkeypatch)
    answers = asyncio.run(chat.abatch(["Hello", "Hi there"]))
    assert sizes == [2] and [a.content for a in answers] == expected


def test_batch_with_a_bad_input_reports_it_per_input(chat):
    results = chat.batch([MESSAGES, MESSAGES], return_exceptions=True, emphasis=["Be brief."])
    assert all(isinstance(r, AIMessage) for r in results)
    results = chat.batch(["Hello", [HumanMessage([{"type": "image", "url": "x"}])]], return_exceptions=True)
    assert isinstance(results[0], AIMessage) and isinstance(results[1], ValueError)


# --- async ----------------------------------------------------------------------------------


def test_async_calls_do_not_block_the_event_loop(tiny_engine):
    chat = ChatPasta(model=tiny_engine, max_tokens=40)

    async def main() -> tuple[int, str, str]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        answer = await chat.ainvoke(MESSAGES)
        streamed = "".join([c.content async for c in chat.astream(MESSAGES)])
        done.set()
        await task
        return ticks, answer.content, streamed

    ticks, answer, streamed = asyncio.run(main())
    assert ticks > 5
    assert answer == streamed == core_text(tiny_engine, CORE, steer=False, max_new_tokens=40)


def test_closing_an_async_stream_early_stops_generation(tiny_engine, monkeypatch):
    chat = ChatPasta(model=tiny_engine, max_tokens=400)
    produced: list[str] = []
    original = tiny_engine.stream

    def counting_stream(*args, **kwargs):
        for text in original(*args, **kwargs):
            produced.append(text)
            yield text

    monkeypatch.setattr(tiny_engine, "stream", counting_stream)

    async def first_chunk() -> str:
        stream = chat.astream(MESSAGES)
        chunk = await stream.__anext__()
        await stream.aclose()
        return chunk.content

    assert asyncio.run(first_chunk())
    deadline = time.perf_counter() + 20
    while any(t.name == "langchain-pasta-stream" for t in threading.enumerate()) and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "langchain-pasta-stream" for t in threading.enumerate())
    assert len(produced) < 50  # stopped soon after the close, far from the 400 tokens asked for


# --- construction, parameters, errors -------------------------------------------------------


def test_identifying_and_tracing_params(chat):
    params = chat._identifying_params
    assert params["max_tokens"] == 6 and params["alpha"] == 0.01 and params["heads"].startswith("shipped")
    ls = chat._get_ls_params(stop=["x"])
    assert ls["ls_provider"] == "pasta" and ls["ls_model_type"] == "chat" and ls["ls_stop"] == ["x"]


def test_models_loaded_by_name_are_shared(monkeypatch, tiny_engine):
    loads: list[str] = []

    def from_pretrained(source, **kwargs):
        loads.append(source)
        return tiny_engine

    monkeypatch.setattr(PastaModel, "from_pretrained", from_pretrained)
    first = ChatPasta(model="tiny-test-model")
    second = ChatPasta(model="tiny-test-model", pin_system=True)
    assert first.engine is second.engine is load_engine("tiny-test-model") and loads == ["tiny-test-model"]
    assert ChatPasta(engine=tiny_engine).engine is tiny_engine


def test_custom_heads_and_alpha(tiny_engine):
    marked = [HumanMessage(f"Context: {emphasize('The tower is in Rome.')} Where?")]
    core = [{"role": "user", "content": marked[0].content}]
    custom = ChatPasta(model=tiny_engine, max_tokens=6, heads={"0": [0, 1]}, alpha=0.001)
    assert custom.invoke(marked).content == core_text(tiny_engine, core, heads={"0": [0, 1]}, alpha=0.001)
    assert custom._identifying_params["heads"].startswith("custom: 2 heads")


def spy_steer_generated(engine: PastaModel, monkeypatch) -> list[tuple[str, Any]]:
    """Records (method, steer_generated) of every generate_batch / stream call the engine gets."""
    calls: list[tuple[str, Any]] = []
    generate_batch, stream = engine.generate_batch, engine.stream

    def spy_generate_batch(prompts, **kwargs):
        calls.append(("generate_batch", sent(kwargs, "steer_generated")))
        return generate_batch(prompts, **kwargs)

    def spy_stream(prompt, **kwargs):
        calls.append(("stream", sent(kwargs, "steer_generated")))
        return stream(prompt, **kwargs)

    monkeypatch.setattr(engine, "generate_batch", spy_generate_batch)
    monkeypatch.setattr(engine, "stream", spy_stream)
    return calls


def test_steer_generated_field_and_call_option_reach_the_core(tiny_engine, monkeypatch):
    marked = [HumanMessage(f"Context: {emphasize('The tower is in Rome.')} Where?")]
    core = [{"role": "user", "content": marked[0].content}]
    default, expected = core_text(tiny_engine, core), core_text(tiny_engine, core, steer_generated=True)
    calls = spy_steer_generated(tiny_engine, monkeypatch)
    chat = ChatPasta(model=tiny_engine, max_tokens=6)
    chosen = ChatPasta(model=tiny_engine, max_tokens=6, steer_generated=True)
    assert chat.invoke(marked).content == default
    assert chosen.invoke(marked).content == expected
    assert "".join(c.content for c in chosen.stream(marked)) == expected
    assert chat.invoke(marked, steer_generated=True).content == expected
    assert chat.bind(steer_generated=True).invoke(marked).content == expected
    assert "".join(c.content for c in chat.stream(marked, steer_generated=True)) == expected
    chosen.invoke(marked, steer_generated=False)
    assert calls == [("generate_batch", None), ("generate_batch", True), ("stream", True),
                     ("generate_batch", True), ("generate_batch", True), ("stream", True),
                     ("generate_batch", False)]
    # shown resolved, as alpha is; and requests that differ in it are never batched together
    assert chat._identifying_params["steer_generated"] is tiny_engine.steer_generated is False
    assert chosen._identifying_params["steer_generated"] is True
    requests = [chat._request(marked, None, {"steer_generated": value}) for value in (None, True, False)]
    assert len({r.batch_key() for r in requests}) == len({r.key() for r in requests}) == 3


def test_generated_alpha_field_and_call_option_reach_the_core(tiny_engine, monkeypatch):
    marked = [HumanMessage(f"Context: {emphasize('The tower is in Rome.')} Where?")]
    core = [{"role": "user", "content": marked[0].content}]
    expected = core_text(tiny_engine, core, steer_generated=True, generated_alpha=1e-4)
    seen: list[Any] = []
    generate_batch, stream = tiny_engine.generate_batch, tiny_engine.stream
    monkeypatch.setattr(tiny_engine, "generate_batch",
                        lambda p, **k: seen.append(sent(k, "generated_alpha")) or generate_batch(p, **k))
    monkeypatch.setattr(tiny_engine, "stream", lambda p, **k: seen.append(sent(k, "generated_alpha")) or stream(p, **k))
    chat = ChatPasta(model=tiny_engine, max_tokens=6, steer_generated=True)
    chosen = ChatPasta(model=tiny_engine, max_tokens=6, steer_generated=True, generated_alpha=1e-4)
    assert chosen.invoke(marked).content == "".join(c.content for c in chosen.stream(marked)) == expected
    assert chat.invoke(marked, generated_alpha=1e-4).content == expected
    assert chat.bind(generated_alpha=1e-4).invoke(marked).content == expected
    chat.invoke(marked)
    assert seen == [1e-4, 1e-4, 1e-4, 1e-4, None]
    assert chosen._identifying_params["generated_alpha"] == 1e-4
    assert chat._identifying_params["generated_alpha"] is tiny_engine.generated_alpha is None
    requests = [chat._request(marked, None, {"generated_alpha": value}) for value in (None, 1e-4, 1e-3)]
    assert len({r.batch_key() for r in requests}) == len({r.key() for r in requests}) == 3
    with pytest.raises(ValidationError, match="generated_alpha must be a number > 0"):
        ChatPasta(model=tiny_engine, generated_alpha=0)
    for name in ("alpha", "generated_alpha"):  # a lax float would read True as 1.0 and "0.5" as 0.5
        for bad in (True, "0.5"):
            with pytest.raises(ValidationError, match=name):
                ChatPasta(model=tiny_engine, **{name: bad})
    with pytest.raises(ValueError, match="alpha must be > 0"):
        chat.invoke(marked, alpha=True)
    with pytest.raises(ValueError, match="generated_alpha must be a number > 0"):
        chat.invoke(marked, generated_alpha=-1.0)


def test_bad_steer_generated_is_a_clear_error(chat, tiny_engine):
    with pytest.raises(ValidationError, match="steer_generated"):
        ChatPasta(model=tiny_engine, steer_generated="yes")  # a lax bool would take "yes" as True
    for bad in ("yes", 1):
        with pytest.raises(ValueError, match="steer_generated must be True, False or None"):
            chat.invoke(MESSAGES, steer_generated=bad)
    with pytest.raises(ValueError, match="steer_generated must be True, False or None"):
        "".join(c.content for c in chat.stream(MESSAGES, steer_generated="no"))


@pytest.mark.parametrize(
    "params, message",
    [
        ({"temperature": -1}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"alpha": 0}, "alpha"),
        ({"heads": [99]}, "layer 99"),
        ({"max_new_token": 5}, "unknown parameter"),
    ],
)
def test_bad_settings_are_clear_errors(tiny_engine, params, message):
    with pytest.raises(ValidationError, match=message):
        ChatPasta(model=tiny_engine, **params)


def test_connection_parameters_are_kept_without_a_server(tiny_engine):
    """The standard suite passes them to every chat model; they configure a base_url connection only."""
    chat = ChatPasta(model=tiny_engine, api_key="unused", timeout=30, max_retries=3, max_new_tokens=3)
    assert chat.max_tokens == 3 and chat.timeout == 30 and chat.api_key.get_secret_value() == "unused"
    assert chat._identifying_params["max_retries"] == 3
    with pytest.raises(ValidationError, match="pass no loaded model"):
        ChatPasta(model=tiny_engine, base_url="http://127.0.0.1:9/v1")


def test_bad_calls_are_clear_errors(chat):
    with pytest.raises(TypeError, match="unknown call option"):
        chat.invoke(MESSAGES, functions=[{"name": "x"}])
    with pytest.raises(ValueError, match="serves the loaded model"):
        chat.invoke(MESSAGES, model="some-other-model")
    with pytest.raises(ValueError, match="reads text only"):
        chat.invoke([HumanMessage([{"type": "image", "url": "http://x/y.png"}])])
    with pytest.raises(TypeError, match="pasta_emphasis"):
        chat.invoke([HumanMessage("hi", additional_kwargs={"pasta_emphasis": 3})])


def test_an_unsteered_request_stays_unsteered_inside_a_steered_batch(chat, tiny_engine):
    marked = [pin(HumanMessage("Where is the tower?"))]
    plain = chat.invoke(marked, steer=False)
    answers = chat.batch([marked, marked], config=[{}, {}], steer=False)
    mixed = chat.batch([marked, "Hello"])
    assert [a.content for a in answers] == [plain.content] * 2
    assert mixed[0].response_metadata["steered"] is True


def test_streamed_usage_is_the_cores_exact_count(chat, tiny_engine, monkeypatch):
    messages = [pin(HumanMessage("Where is the tower?"))]
    invoked = chat.invoke(messages)

    def no_recounting(*args, **kwargs):
        raise AssertionError("a finished stream must report the core's own counts, not re-render the prompt")

    streamed = None
    for chunk in chat.stream(messages):
        streamed = chunk if streamed is None else streamed + chunk
        monkeypatch.setattr(tiny_engine, "render", no_recounting)  # the core rendered before the first chunk
    monkeypatch.undo()
    assert streamed.content == invoked.content
    assert streamed.usage_metadata == invoked.usage_metadata
    assert streamed.response_metadata["finish_reason"] == invoked.response_metadata["finish_reason"]


def test_every_steering_field_reaches_the_core(tiny_engine, monkeypatch):
    """A field, a call option or .bind: each Steering field (a new one too) arrives in the core's Steering."""
    import dataclasses

    from tiny import STEERING_SAMPLES

    from pasta_rag import Steering

    assert set(STEERING_SAMPLES) == {f.name for f in dataclasses.fields(Steering)}
    received: list[Steering] = []
    generate_batch, stream = tiny_engine.generate_batch, tiny_engine.stream
    monkeypatch.setattr(tiny_engine, "generate_batch",
                        lambda p, **k: received.append(k["steering"]) or generate_batch(p, **k))
    monkeypatch.setattr(tiny_engine, "stream", lambda p, **k: received.append(k["steering"]) or stream(p, **k))
    marked = [HumanMessage(f"Context: {emphasize('The tower is in Rome.')} Where?")]
    for name, value in STEERING_SAMPLES.items():
        steering = Steering(**{name: value})
        by_field = ChatPasta(model=tiny_engine, max_tokens=2, steering=steering)
        by_field.invoke(marked)
        "".join(c.content for c in by_field.stream(marked))
        chat = ChatPasta(model=tiny_engine, max_tokens=2)
        chat.invoke(marked, steering=steering)
        chat.bind(**{name: value}).invoke(marked)  # every field is also a call option by its own name
        assert [getattr(s, name) for s in received] == [getattr(steering, name)] * 4, name
        received.clear()


def test_a_chain_steers_only_the_relevant_documents_unless_told_otherwise(tiny_engine, monkeypatch):
    """format_docs marks every retrieved document; the chat model keeps, by default, the ones that answer."""
    from pasta_rag import Steering

    seen: list = []
    generate_batch = tiny_engine.generate_batch
    monkeypatch.setattr(tiny_engine, "generate_batch",
                        lambda p, **k: seen.append(sent(k, "select")) or generate_batch(p, **k))
    docs = format_docs([Document(page_content="The tower is in Rome."), Document(page_content="Paris is big.")])
    question = [HumanMessage(f"Context: {docs}\nWhere is the tower?")]
    ChatPasta(model=tiny_engine, max_tokens=4).invoke(question)
    ChatPasta(model=tiny_engine, max_tokens=4, select="all").invoke(question)
    ChatPasta(model=tiny_engine, max_tokens=4, steering=Steering(select="all")).invoke(question)
    ChatPasta(model=tiny_engine, max_tokens=4).invoke(question, select="all")
    assert seen == ["relevant", "all", "all", "all"]
    assert ChatPasta(model=tiny_engine)._identifying_params["select"] == "relevant"
    with pytest.raises(ValueError, match="select"):
        ChatPasta(model=tiny_engine, select="best")
