"""Every refusal in OpenAI's error shape, with the right status and the field it is about; never a traceback."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from server_support import MODEL, chat

from pasta_rag.server import create_app


def error_of(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param
    assert "Traceback" not in response.text
    return body["error"]


def test_malformed_json_is_a_400(client):
    response = client.post("/v1/chat/completions", content=b'{"model": "tiny-llama", "messages": [',
                           headers={"content-type": "application/json"})
    assert error_of(response, 400)["code"] == "invalid_json"
    not_an_object = client.post("/v1/chat/completions", json=["a list"])
    assert "JSON object" in error_of(not_an_object, 400)["message"]


def test_missing_and_badly_typed_fields_name_the_field(client):
    assert "messages" in error_of(client.post("/v1/chat/completions", json={"model": MODEL}), 400, "messages")["message"]
    error_of(client.post("/v1/chat/completions", json=chat(temperature=3)), 400, "temperature")
    error_of(client.post("/v1/chat/completions", json=chat(max_tokens=0)), 400, "max_tokens")
    tool_message = chat()
    tool_message["messages"] = [{"role": "tool", "content": "42"}]
    assert "tool_call_id" in error_of(client.post("/v1/chat/completions", json=tool_message), 400,
                                      "messages.0")["message"]


def test_unknown_model_is_a_404(client):
    error = error_of(client.post("/v1/chat/completions", json=chat(model="gpt-4o")), 404, "model")
    assert error["code"] == "model_not_found" and MODEL in error["message"]
    error_of(client.get("/v1/models/gpt-4o"), 404, "model")
    assert error_of(client.get("/v1/nothing-here"), 404)["type"] == "not_found_error"


@pytest.mark.parametrize("field, value", [
    ("parallel_tool_calls", False),
    ("functions", [{"name": "f", "parameters": {}}]),
    ("logprobs", True),
    ("frequency_penalty", 0.5),
    ("user", "someone"),
])
def test_fields_that_cannot_be_honoured_are_refused_by_name(client, field, value):
    error = error_of(client.post("/v1/chat/completions", json=chat(**{field: value})), 400, field)
    assert error["message"].startswith(f"{field} cannot be honoured") and error["code"] == "unsupported_parameter"


def test_tools_and_response_format_are_refused_on_text_completions(client):
    for field, value in (("tools", [{"type": "function", "function": {"name": "f"}}]),
                         ("response_format", {"type": "json_object"})):
        error = error_of(client.post("/v1/completions", json={"model": MODEL, "prompt": "a", field: value}), 400, field)
        assert "only /v1/chat/completions" in error["message"]


def test_unknown_fields_n_and_stream_options_alone_are_refused(client):
    error = error_of(client.post("/v1/chat/completions", json=chat(best_of_luck=1)), 400, "best_of_luck")
    assert "Unrecognized request argument" in error["message"]
    assert "one choice per request" in error_of(client.post("/v1/chat/completions", json=chat(n=2)), 400, "n")["message"]
    error_of(client.post("/v1/chat/completions", json=chat(stream_options={"include_usage": True})), 400,
             "stream_options")
    error_of(client.post("/v1/chat/completions", json=chat(pasta={"alhpa": 0.1})), 400, "pasta.alhpa")
    error_of(client.post("/v1/completions", json={"model": MODEL, "prompt": "a", "echo": True}), 400, "echo")
    error_of(client.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b"]}), 400, "prompt")


def test_disagreeing_token_limits(client):
    error_of(client.post("/v1/chat/completions", json=chat(max_tokens=4, max_completion_tokens=5)), 400,
             "max_completion_tokens")


def test_a_prompt_over_the_window_says_how_many_tokens(client):
    error = error_of(client.post("/v1/chat/completions", json=chat("x" * 600)), 400, "messages")
    assert error["code"] == "context_length_exceeded"
    assert "has 6" in error["message"] and "reads at most 512" in error["message"]  # 600 characters + template


def test_emphasis_that_is_not_in_the_prompt_is_named(client):
    error = error_of(client.post("/v1/chat/completions", json=chat(emphasis=["purple elephants"])), 400, "emphasis")
    assert "'purple elephants' does not occur in the prompt" in error["message"]
    unbalanced = error_of(client.post("/v1/chat/completions", json=chat("an \ue000 open marker")), 400, "emphasis")
    assert "marker" in unbalanced["message"]


def test_bad_steering_is_a_400(client):
    error_of(client.post("/v1/chat/completions", json=chat(pasta={"alpha": 0})), 400, "pasta.alpha")
    error_of(client.post("/v1/chat/completions", json=chat(pasta={"alpha": "strong"})), 400, "pasta.alpha")
    no_set = error_of(client.post("/v1/chat/completions", json=chat(pasta={"heads": "instructions"})), 400,
                      "pasta.heads")
    assert "ships no 'instructions' head set" in no_set["message"]
    error_of(client.post("/v1/chat/completions", json=chat(pasta={"heads": [7]})), 400, "pasta.heads")
    error_of(client.post("/v1/chat/completions", json=chat(pasta={"heads": []})), 400, "pasta.heads")
    # a string naming a file is never read: only the shipped sets' names are strings
    error_of(client.post("/v1/chat/completions", json=chat(pasta={"heads": "/etc/passwd"})), 400, "pasta.heads")


def test_a_body_over_the_limit_is_a_413(model):
    with TestClient(create_app(model, max_body_bytes=2000)) as small:
        assert small.post("/v1/chat/completions", json=chat()).status_code == 200
        error = error_of(small.post("/v1/chat/completions", json=chat("x" * 3000)), 413)
        assert "2000 bytes" in error["message"]

        def chunked():  # no Content-Length: the limit is counted as the body arrives
            yield b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "'
            yield b"x" * 3000
            yield b'"}]}'

        error_of(small.post("/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"}),
                 413)


def test_api_key(model):
    with TestClient(create_app(model, api_key="s3cret")) as keyed:
        missing = error_of(keyed.post("/v1/chat/completions", json=chat()), 401)
        assert "Authorization: Bearer" in missing["message"] and missing["code"] == "invalid_api_key"
        wrong = error_of(keyed.get("/v1/models", headers={"Authorization": "Bearer s3cre"}), 401)
        assert "Incorrect API key" in wrong["message"]
        assert keyed.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert keyed.post("/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert keyed.get("/health").status_code == 200  # probes need no key


def test_an_unexpected_failure_is_a_500_without_details(model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(model, "generate_batch", broken)
    with TestClient(create_app(model), raise_server_exceptions=False) as failing:
        response = failing.post("/v1/chat/completions", json=chat())
        error = error_of(response, 500)
        assert error["type"] == "server_error" and "secret" not in response.text
        assert failing.get("/health").status_code == 200


def test_a_stream_that_fails_ends_with_an_error_event(model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    with TestClient(create_app(model)) as streaming:
        real_stream = model.stream

        def failing_stream(*args, **kwargs):
            stream = real_stream(*args, **kwargs)
            stream._chunks = map(broken, [1])
            return stream

        monkeypatch.setattr(model, "stream", failing_stream)
        response = streaming.post("/v1/chat/completions", json=chat(stream=True))
        assert response.status_code == 200
        last = response.text.strip().split("\n\n")[-1]
        assert last.startswith("data: {\"error\"") and "server_error" in last and "secret" not in last
