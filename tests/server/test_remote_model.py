"""RemoteModel: the server used through the PastaModel calls the integrations make; greedy answers
equal the in-process ones, so emphasis and steering reached the server unchanged."""

from __future__ import annotations

import pytest
from server_support import MODEL, QUESTION

from pasta_rag import HeadSet, strip_markers
from pasta_rag.errors import ContextWindowError, PastaError
from pasta_rag.remote import RemoteModel

MESSAGES = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def remote(live_url) -> RemoteModel:
    return RemoteModel(f"{live_url}/v1", max_retries=0)


def test_it_reads_the_served_model(remote, model):
    assert remote.name == MODEL and remote.context_window == model.context_window


def test_generate_stream_and_batch_equal_the_in_process_answers(remote, model):
    expected = model.generate(MESSAGES, max_new_tokens=8)
    answer = remote.generate(MESSAGES, max_new_tokens=8)
    assert (answer.text, answer.prompt_tokens, answer.completion_tokens, answer.steered) == \
        (expected.text, expected.prompt_tokens, expected.completion_tokens, True)
    stream = remote.stream(MESSAGES, max_new_tokens=8)
    assert "".join(stream) == expected.text and stream.generation.completion_tokens == 8
    assert remote.generate(QUESTION, max_new_tokens=6).text == model.generate(QUESTION, max_new_tokens=6).text
    batch = remote.generate_batch([MESSAGES, QUESTION], max_new_tokens=6)
    assert [g.text for g in batch] == [g.text for g in (model.generate(MESSAGES, max_new_tokens=6),
                                                          model.generate(QUESTION, max_new_tokens=6))]


def test_emphasis_and_steering_travel_as_the_servers_fields(remote, model):
    plain = [{"role": "user", "content": strip_markers(QUESTION)}]
    heads = HeadSet.from_json({"2": [0, 1]})
    expected = model.generate(plain, emphasis=["the sky is green"], alpha=0.1, heads=heads, max_new_tokens=8)
    assert expected.text != model.generate(plain, max_new_tokens=8, steer=False).text
    assert remote.generate(plain, emphasis=["the sky is green"], alpha=0.1, heads=heads,
                           max_new_tokens=8).text == expected.text
    assert remote.generate(MESSAGES, steer=False, max_new_tokens=8).text == model.generate(
        MESSAGES, steer=False, max_new_tokens=8).text


def test_what_cannot_travel_is_refused_and_server_errors_are_core_errors(remote):
    with pytest.raises(PastaError, match="spans cannot be sent"):
        remote.generate(MESSAGES, spans=[(0, 3)])
    with pytest.raises(ContextWindowError, match="tokens"):
        remote.generate([{"role": "user", "content": "x" * 600}])
    with pytest.raises(PastaError, match="Could not reach"):
        RemoteModel("http://127.0.0.1:9/v1", max_retries=0)
