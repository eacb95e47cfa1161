"""Every endpoint and request option of the app, on the tiny model: answers equal the in-process calls."""

from __future__ import annotations

import json

import pytest
from server_support import MODEL, QUESTION, chat

from pasta_rag import Steering, emphasize, strip_markers
from pasta_rag.emphasis import GROUP_MARKERS


def messages(content: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": content}]


def events(response) -> list:
    """The data of each server-sent event, JSON-decoded except the final ``[DONE]``."""
    assert response.headers["content-type"].startswith("text/event-stream")
    data = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in response.text.split("\n\n") if line)
    return [item if item == "[DONE]" else json.loads(item) for item in data]


def test_health_and_models(client):
    assert client.get("/health").json() == {"status": "ok", "model": MODEL}
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == [MODEL]
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL


def test_chat_completion_is_the_in_process_steered_answer(client, model):
    body = client.post("/v1/chat/completions", json=chat()).json()
    expected = model.generate(messages(), max_new_tokens=8)
    assert expected.text != model.generate(messages(), max_new_tokens=8, steer=False).text  # steering shows
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == MODEL
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert choice["finish_reason"] == expected.finish_reason == "length"
    assert body["usage"] == {"prompt_tokens": expected.prompt_tokens, "completion_tokens": 8,
                             "total_tokens": expected.prompt_tokens + 8}
    assert body["pasta"] == {"steered": True, "emphasized_tokens": len("the sky is green"), "groups": [
        {"group": "context", "emphasized_tokens": 16, "head_set": "model", "heads": 8, "alpha": 0.01}]}


def test_text_completion_uses_the_plain_prompt(client, model):
    prompt = "Answer from " + emphasize("the sky is green") + ":"
    body = client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 6}).json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == model.generate(prompt, max_new_tokens=6).text
    assert body["pasta"]["steered"] is True
    as_list = client.post("/v1/completions", json={"model": MODEL, "prompt": [prompt], "max_tokens": 6}).json()
    assert as_list["choices"][0]["text"] == body["choices"][0]["text"]


def test_emphasis_field_and_pasta_options_reach_the_core(client, model):
    plain = strip_markers(QUESTION)
    body = client.post("/v1/chat/completions", json=chat(plain, emphasis=["the sky is green"],
                                                          pasta={"alpha": 0.2, "heads": {"1": [0, 3]}})).json()
    expected = model.generate(messages(plain), emphasis=["the sky is green"], max_new_tokens=8,
                              steering=Steering(alpha=0.2, heads={"1": [0, 3]}))
    assert body["choices"][0]["message"]["content"] == expected.text
    assert body["pasta"]["groups"] == [{"group": "context", "emphasized_tokens": 16, "head_set": "request",
                                        "heads": 2, "alpha": 0.2}]
    generated = client.post("/v1/chat/completions", json=chat(pasta={
        "heads": [2], "steer_generated": True, "generated_alpha": 1e-3, "select": "relevant"})).json()
    assert generated["choices"][0]["message"]["content"] == model.generate(
        messages(), max_new_tokens=8, heads=[2], steer_generated=True, generated_alpha=1e-3, select="relevant").text


def test_steer_false_is_the_plain_model_and_nothing_emphasized_steers_nothing(client, model):
    off = client.post("/v1/chat/completions", json=chat(pasta={"steer": False})).json()
    assert off["choices"][0]["message"]["content"] == model.generate(messages(), max_new_tokens=8, steer=False).text
    assert off["pasta"] == {"steered": False, "emphasized_tokens": 16, "groups": []}
    unmarked = client.post("/v1/chat/completions", json=chat(strip_markers(QUESTION))).json()
    assert unmarked["pasta"] == {"steered": False, "emphasized_tokens": 0, "groups": []}


def test_a_second_emphasis_group_with_its_own_heads(client, model):
    start, end = GROUP_MARKERS["instructions"]
    content = f"{start}Answer in one word.{end} " + QUESTION
    pasta = {"groups": {"instructions": {"heads": [0], "alpha": 0.05}}}
    body = client.post("/v1/chat/completions", json=chat(content, pasta=pasta)).json()
    expected = model.generate(messages(content), max_new_tokens=8,
                              groups={"instructions": Steering(heads=[0], alpha=0.05)})
    assert body["choices"][0]["message"]["content"] == expected.text
    assert [(g["group"], g["head_set"], g["heads"]) for g in body["pasta"]["groups"]] == [
        ("context", "model", 8), ("instructions", "request", 4)]


def test_decoding_fields(client, model):
    stopped_at = model.generate(messages(), max_new_tokens=8).text[3:5]
    body = client.post("/v1/chat/completions", json=chat(stop=stopped_at)).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == model.generate(messages(), max_new_tokens=8,
                                                                      stop=[stopped_at]).text
    longer = client.post("/v1/chat/completions", json=chat(max_tokens=None, max_completion_tokens=12)).json()
    assert longer["usage"]["completion_tokens"] == model.generate(messages(), max_new_tokens=12).completion_tokens
    sampled = [client.post("/v1/chat/completions", json=chat(temperature=1.0, top_p=0.9, seed=5)).json()
               for _ in range(2)]
    expected = model.generate(messages(), max_new_tokens=8, temperature=1.0, top_p=0.9, seed=5).text
    assert [s["choices"][0]["message"]["content"] for s in sampled] == [expected, expected]


def test_without_max_tokens_a_long_prompt_is_answered_up_to_the_window(client, model):
    content = "x" * 400  # 400 of the tiny model's 512 tokens, with the template's: fewer than 256 left
    body = client.post("/v1/chat/completions", json=chat(content, max_tokens=None)).json()
    room = model.context_window - body["usage"]["prompt_tokens"]
    assert 0 < room < 256
    expected = model.generate(messages(content), max_new_tokens=room, steer=False)
    assert body["choices"][0]["message"]["content"] == expected.text


def test_message_forms(client, model):
    parts = [{"type": "text", "text": "Context: "}, {"type": "text", "text": emphasize("the sky is green")}]
    with_parts = client.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 8, "messages": [
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": parts}]}).json()
    expected = model.generate([{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Context: " + emphasize("the sky is green")}],
                              max_new_tokens=8)
    assert with_parts["choices"][0]["message"]["content"] == expected.text


def test_streamed_chat_equals_the_answer_and_ends_with_usage_and_done(client, model):
    answer = client.post("/v1/chat/completions", json=chat()).json()
    streamed = client.post("/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True}))
    assert streamed.status_code == 200
    items = events(streamed)
    assert items[-1] == "[DONE]"
    chunks = items[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"])
    assert text == answer["choices"][0]["message"]["content"]
    finishing, usage = chunks[-2], chunks[-1]
    assert finishing["choices"][0]["finish_reason"] == "length" and finishing["pasta"] == answer["pasta"]
    assert usage["choices"] == [] and usage["usage"] == answer["usage"]
    without_usage = events(client.post("/v1/chat/completions", json=chat(stream=True)))
    assert all(c["usage"] is None for c in without_usage[:-1])


def test_streamed_completion(client, model):
    prompt = "Answer from " + emphasize("the sky is green") + ":"
    items = events(client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 6,
                                                        "stream": True}))
    assert items[-1] == "[DONE]"
    assert "".join(c["choices"][0]["text"] for c in items[:-1]) == model.generate(prompt, max_new_tokens=6).text
    assert items[-2]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("no_op", [{"n": 1}, {"response_format": {"type": "text"}}, {"tools": []},
                                   {"logprobs": False}, {"presence_penalty": 0}, {"tool_choice": "none"}])
def test_fields_at_their_no_op_value_are_accepted(client, no_op):
    assert client.post("/v1/chat/completions", json=chat(**no_op)).status_code == 200
