"""``pasta-rag serve``: its options reach create_app and uvicorn; the default host stays on this machine."""

from __future__ import annotations

import pytest
import uvicorn
from fastapi.testclient import TestClient
from tiny import saved_tiny_model
from typer.testing import CliRunner

from pasta_rag.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return saved_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def started(monkeypatch) -> dict:
    """What uvicorn.run was called with, instead of running it."""
    calls: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda served, **options: calls.update(app=served, **options))
    return calls


def test_help_lists_the_options():
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--host", "--port", "--api-key", "--batch-window-ms", "--max-batch-size"):
        assert option in result.output


def test_serve_defaults_to_loopback_and_passes_its_options(model_dir, started):
    result = runner.invoke(app, ["serve", "--model", str(model_dir), "--port", "8123", "--api-key", "k",
                                 "--batch-window-ms", "25", "--max-batch-size", "3"])
    assert result.exit_code == 0, result.output
    assert started["host"] == "127.0.0.1" and started["port"] == 8123
    with TestClient(started["app"]) as client:
        assert client.get("/v1/models").status_code == 401
        listed = client.get("/v1/models", headers={"Authorization": "Bearer k"}).json()
        served = listed["data"][0]["id"]
        body = {"model": str(model_dir), "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        answer = client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"})
        assert answer.status_code == 200 and answer.json()["model"] == served  # the --model value is an alias
        batcher = client.app.state.batcher
        assert (batcher.window_s, batcher.max_batch_size) == (0.025, 3)


def test_heads_gives_a_model_without_a_shipped_set_its_head_set(model_dir, started):
    body = {"model": str(model_dir), "max_tokens": 2, "messages": [{"role": "user", "content": "\ue000hi\ue001"}]}
    runner.invoke(app, ["serve", "--model", str(model_dir)])
    with TestClient(started["app"]) as client:
        refused = client.post("/v1/chat/completions", json=body).json()["error"]
        assert refused["param"] == "pasta.heads" and "--heads" in refused["message"]
    result = runner.invoke(app, ["serve", "--model", str(model_dir), "--heads", '{"1": [0, 2]}'])
    assert result.exit_code == 2 and "error" in result.output  # a JSON text is not a file: refused, no traceback
    heads_file = model_dir / "heads.json"
    heads_file.write_text('{"1": [0, 2]}')
    assert runner.invoke(app, ["serve", "--model", str(model_dir), "--heads", str(heads_file)]).exit_code == 0
    with TestClient(started["app"]) as client:
        assert client.post("/v1/chat/completions", json=body).json()["pasta"]["groups"][0]["heads"] == 2


def test_the_api_key_can_come_from_the_environment(model_dir, started):
    result = runner.invoke(app, ["serve", "--model", str(model_dir)], env={"PASTA_RAG_API_KEY": "from-env"})
    assert result.exit_code == 0, result.output
    with TestClient(started["app"]) as client:
        assert client.get("/v1/models", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_a_model_that_cannot_load_is_an_error_without_a_traceback(tmp_path, started):
    result = runner.invoke(app, ["serve", "--model", str(tmp_path / "missing.gguf")])
    assert result.exit_code == 2 and "error" in result.output and "Traceback" not in result.output
    assert not started
