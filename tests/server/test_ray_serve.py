"""Ray Serve scale-out: two CPU replicas of the app behind Ray's proxy, driven with the real openai client."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import openai
import pytest
from tiny import saved_tiny_model

from pasta_rag import PastaModel

ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed: pip install 'pasta-rag[ray]'")
from ray import serve  # noqa: E402

from pasta_rag.server.ray_serve import REPLICA_HEADER, build  # noqa: E402

HEADS = [1, 2]
PROMPTS = [f"Context: the sky is {colour}. Question: what colour is the sky?" for colour in ("green", "red")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return saved_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def in_process(model_dir) -> PastaModel:
    return PastaModel.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def proxy_url(model_dir) -> Iterator[str]:
    """Two replicas (one CPU each) on a local Ray of two CPUs; Ray and Serve are shut down afterwards."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build({"model": str(model_dir), "replicas": "2"}))
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_answer_what_the_in_process_model_answers(proxy_url, model_dir, in_process):
    client = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="unused", max_retries=0)
    replicas = set()
    for attempt in range(24):
        messages = [{"role": "user", "content": PROMPTS[attempt % 2]}]
        reply = client.chat.completions.with_raw_response.create(
            model=str(model_dir), messages=messages, max_tokens=6,
            extra_body={"emphasis": ["the sky is"], "pasta": {"heads": HEADS}})
        replicas.add(reply.headers[REPLICA_HEADER])
        expected = in_process.generate(messages, emphasis=["the sky is"], heads=HEADS, max_new_tokens=6).text
        assert reply.parse().choices[0].message.content == expected
        if len(replicas) == 2 and attempt >= 3:
            break
    assert len(replicas) == 2, f"only {replicas} answered"


def test_a_stream_through_the_proxy_names_its_replica(proxy_url, model_dir, in_process):
    client = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": PROMPTS[0]}]
    with client.chat.completions.with_streaming_response.create(
            model=str(model_dir), messages=messages, max_tokens=6, stream=True,
            extra_body={"emphasis": ["the sky is"], "pasta": {"heads": HEADS}}) as reply:
        assert reply.headers[REPLICA_HEADER]
        text = "".join(chunk.choices[0].delta.content or "" for chunk in reply.parse() if chunk.choices)
    assert text == in_process.generate(messages, emphasis=["the sky is"], heads=HEADS, max_new_tokens=6).text


def test_a_bad_build_argument_is_refused_by_name():
    with pytest.raises(ValueError, match="replica"):
        build({"model": "default", "replica": "2"})
    with pytest.raises(ValueError, match="replicas"):
        build({"model": "default", "replicas": "0"})
