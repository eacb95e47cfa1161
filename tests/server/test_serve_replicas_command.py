"""``pasta-rag serve --replicas / --gpus-per-replica / --ray-address``: Ray Serve when asked, checked flags."""

from __future__ import annotations

import pytest
import uvicorn
from tiny import saved_tiny_model
from typer.testing import CliRunner

from pasta_rag.cli import app

ray_serve = pytest.importorskip("pasta_rag.server.ray_serve", reason="the 'ray' extra is not installed")

runner = CliRunner()


@pytest.fixture
def launched(monkeypatch) -> dict:
    """What ray_serve.run and uvicorn.run were called with, instead of running them."""
    calls: dict = {}
    monkeypatch.setattr(ray_serve, "run", lambda args, **where: calls.update(ray=args, **where))
    monkeypatch.setattr(uvicorn, "run", lambda served, **options: calls.update(uvicorn=served))
    return calls


def test_replicas_run_on_ray_serve_with_the_options(launched):
    result = runner.invoke(app, ["serve", "--model", "some-model", "--replicas", "3", "--gpus-per-replica", "0.5",
                                 "--ray-address", "auto", "--port", "8123", "--api-key", "k", "--heads", "context",
                                 "--max-batch-size", "4", "--batch-window-ms", "5", "--max-body-bytes", "99"])
    assert result.exit_code == 0, result.output
    assert "uvicorn" not in launched  # no model loaded here: each replica loads its own
    assert launched["ray_address"] == "auto" and (launched["host"], launched["port"]) == ("127.0.0.1", 8123)
    assert launched["ray"] == ray_serve.ServeArgs(model="some-model", heads="context", api_key="k", replicas=3,
                                                  gpus_per_replica=0.5, batch_window_ms=5, max_batch_size=4,
                                                  max_body_bytes=99)


def test_one_replica_without_a_cluster_is_the_plain_server(launched, tmp_path):
    result = runner.invoke(app, ["serve", "--model", str(saved_tiny_model(tmp_path)), "--replicas", "1"])
    assert result.exit_code == 0, result.output
    assert "uvicorn" in launched and "ray" not in launched


def test_a_ray_address_alone_runs_one_replica_on_that_cluster(launched):
    assert runner.invoke(app, ["serve", "--ray-address", "10.0.0.1:6379"]).exit_code == 0
    assert launched["ray"].replicas == 1 and launched["ray"].gpus_per_replica == 0
    assert launched["ray_address"] == "10.0.0.1:6379"


@pytest.mark.parametrize(("flags", "message"), [
    (["--replicas", "0"], "--replicas"),
    (["--gpus-per-replica", "1"], "give --replicas N too"),
    (["--replicas", "2", "--gpus-per-replica", "0"], "above 0"),
    (["--replicas", "2", "--gpus-per-replica", "-1"], "above 0"),
])
def test_bad_values_are_refused_with_what_was_wrong(launched, flags, message):
    result = runner.invoke(app, ["serve", *flags])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not launched


def test_help_lists_the_scale_out_options():
    result = runner.invoke(app, ["serve", "--help"])
    for option in ("--replicas", "--gpus-per-replica", "--ray-address"):
        assert option in result.output
