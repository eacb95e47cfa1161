"""Batching of concurrent requests, streams beside them, and a client that leaves mid-stream, on a real server."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from server_support import MODEL, chat, running

from pasta_rag import TextStream, emphasize
from pasta_rag.server import create_app
from pasta_rag.server.batcher import Batcher
from pasta_rag.server.calls import chat_call
from pasta_rag.server.schemas import ChatCompletionRequest

PROMPTS = [f"Context: {emphasize(fact)}. Question: what is it?" for fact in
           ("the sky is green", "grass is blue", "snow is black", "fire is cold", "water is dry", "ice is hot")]


def answer(url: str, body: dict) -> dict:
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_concurrent_requests_share_batches_and_get_their_own_answers(model):
    app = create_app(model, batch_window_ms=2000, max_batch_size=4)
    with running(app) as url, ThreadPoolExecutor(len(PROMPTS)) as pool:
        answers = list(pool.map(lambda p: answer(url, chat(p)), PROMPTS))
        batcher: Batcher = app.state.batcher
        assert sorted(batcher.batch_sizes, reverse=True) == [4, 2]
    expected = [model.generate([{"role": "user", "content": p}], max_new_tokens=8).text for p in PROMPTS]
    assert [a["choices"][0]["message"]["content"] for a in answers] == expected
    assert all(a["pasta"]["steered"] for a in answers)


def streamed_text(url: str, body: dict) -> str:
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=120) as response:
        assert response.status_code == 200
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert all("error" not in c for c in chunks), chunks
    return "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"])


def test_32_concurrent_clients_streamed_and_not_all_get_their_own_answer(model):
    """The soak of benchmarks/serve_load.py in small: 32 clients at once, every other one streaming."""
    app = create_app(model, batch_window_ms=200, max_batch_size=8)
    bodies = [chat(PROMPTS[i % len(PROMPTS)], max_tokens=4) for i in range(32)]

    def one(i: int) -> str:
        return streamed_text(url, bodies[i]) if i % 2 else answer(url, bodies[i])["choices"][0]["message"]["content"]

    with running(app) as url, ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, range(32)))
        sizes = app.state.batcher.batch_sizes
    expected = [model.generate([{"role": "user", "content": p}], max_new_tokens=4).text for p in PROMPTS]
    assert answers == [expected[i % len(PROMPTS)] for i in range(32)]
    assert sum(sizes) == 16 and max(sizes) <= 8 and len(sizes) < 16  # the 16 non-streamed ones shared calls


def test_requests_with_other_settings_go_to_other_calls(model):
    app = create_app(model, batch_window_ms=2000, max_batch_size=8)
    bodies = [chat(PROMPTS[0]), chat(PROMPTS[1]), chat(PROMPTS[2], pasta={"alpha": 0.5}),
              chat(PROMPTS[3], max_tokens=4), chat(PROMPTS[4], temperature=1.0, seed=1),
              chat(PROMPTS[5], temperature=1.0, seed=1)]
    with running(app) as url, ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: answer(url, b), bodies))
        assert sorted(app.state.batcher.batch_sizes, reverse=True) == [2, 1, 1, 1, 1]  # seeded samples run alone
    assert answers[2]["choices"][0]["message"]["content"] == model.generate(
        [{"role": "user", "content": PROMPTS[2]}], max_new_tokens=8, alpha=0.5).text
    assert answers[4]["choices"][0]["message"]["content"] == model.generate(
        [{"role": "user", "content": PROMPTS[4]}], max_new_tokens=8, temperature=1.0, seed=1).text


def test_a_real_stream_and_a_batch_use_the_model_at_once_and_both_answers_are_right(model):
    with running(create_app(model, batch_window_ms=0)) as url, httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{url}/v1/chat/completions", json=chat(PROMPTS[0], stream=True,
                                                                         max_tokens=300)) as streamed:
            lines = streamed.iter_lines()
            head = [next(lines), next(lines)]
            other = answer(url, chat(PROMPTS[1]))  # generated while the stream's thread is decoding
            rest = list(lines)
    chunks = [json.loads(line[6:]) for line in [*head, *rest] if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"])
    assert text == model.generate([{"role": "user", "content": PROMPTS[0]}], max_new_tokens=300).text
    assert other["choices"][0]["message"]["content"] == model.generate(
        [{"role": "user", "content": PROMPTS[1]}], max_new_tokens=8).text


class SlowStream:
    """Stands in for ``model.stream``: a chunk every 50 ms for 10 s, recording when it is closed."""

    def __init__(self) -> None:
        self.sent = 0
        self.closed = threading.Event()

    def __call__(self, prompt, **arguments) -> TextStream:
        def chunks(sink: TextStream):
            try:
                for _ in range(200):
                    time.sleep(0.05)
                    self.sent += 1
                    yield "x"
            finally:
                self.closed.set()

        return TextStream(chunks)


@pytest.fixture
def slow_stream(model, monkeypatch) -> SlowStream:
    slow = SlowStream()
    monkeypatch.setattr(model, "stream", slow)
    return slow


def test_a_stream_does_not_hold_up_other_requests(model, slow_stream):
    with running(create_app(model, batch_window_ms=0)) as url, httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{url}/v1/chat/completions", json=chat(stream=True)) as streamed:
            lines = streamed.iter_lines()
            assert next(lines).startswith("data: ")
            started = time.monotonic()
            assert http.get(f"{url}/health").status_code == 200
            assert answer(url, chat())["pasta"]["steered"]
            assert time.monotonic() - started < 5  # the stream has 10 s to go
            assert not slow_stream.closed.is_set()


def test_a_client_that_leaves_mid_stream_stops_its_generation(model, slow_stream):
    with running(create_app(model)) as url, httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{url}/v1/chat/completions", json=chat(stream=True)) as streamed:
            lines = streamed.iter_lines()
            for _ in range(3):
                next(lines)
        # leaving the block closes the connection
        assert slow_stream.closed.wait(timeout=5)
        assert slow_stream.sent < 100


def test_the_core_stream_stops_when_the_client_leaves(model, monkeypatch):
    """The same with the real core stream: it is closed before its last token, and its thread ends."""
    opened: list[TextStream] = []
    real_stream = model.stream

    def recorded(*args, **kwargs) -> TextStream:
        opened.append(real_stream(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(model, "stream", recorded)
    with running(create_app(model)) as url, httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{url}/v1/chat/completions", json=chat(stream=True, max_tokens=400)) as streamed:
            lines = streamed.iter_lines()
            next(lines)
            next(lines)
        deadline = time.monotonic() + 10
        while any(t.name == "pasta-rag-generate" for t in threading.enumerate()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(t.name == "pasta-rag-generate" for t in threading.enumerate())
    assert opened[0].generation is None  # closed early: it never reached its end


def test_batcher_options_are_checked(model):
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(model, max_batch_size=0)
    with pytest.raises(ValueError, match=">= 0 seconds"):
        Batcher(model, window_s=-1)



def test_closing_the_batcher_answers_every_waiting_request(model):
    call = chat_call(model, ChatCompletionRequest(model=MODEL, messages=[{"role": "user", "content": "hi"}]))

    async def scenario() -> list:
        batcher = Batcher(model, window_s=60)
        waiting = [asyncio.ensure_future(batcher.generate(call)) for _ in range(2)]
        await asyncio.sleep(0.05)  # both are collected, in a window that would last a minute
        await batcher.close()
        return await asyncio.gather(*waiting, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert [str(o) for o in outcomes] == ["The server shut down before answering."] * 2
