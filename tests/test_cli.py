"""The pasta-rag command on a tiny model saved to a folder (the local-directory loading path)."""

from __future__ import annotations

import json

import pytest
from tiny import char_tokenizer, tiny_model
from typer.testing import CliRunner

from pasta_rag.research.bench import ratios, run_all
from pasta_rag.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    (folder / "heads.json").write_text(json.dumps({"1": [0, 2], "2": [1]}))
    return folder


def test_help_explains_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "ask" in result.output and "bench" in result.output and "steers" in result.output


def test_ask_prints_both_answers_as_json(model_dir, tmp_path):
    context = tmp_path / "context.txt"
    context.write_text("The sky is green today.")
    args = ["ask", "What colour is the sky?", "--context-file", str(context), "--model", str(model_dir),
            "--heads", str(model_dir / "heads.json"), "--max-new-tokens", "6", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)  # progress bars of transformers go to stderr
    assert set(answers) == {"model", "prompt_format", "unsteered", "steered"}
    assert answers["prompt_format"] == "chat template"
    harder = runner.invoke(app, [*args, "--steer-generated", "--generated-alpha", "1e-6"])
    assert harder.exit_code == 0, harder.output
    assert json.loads(harder.stdout)["unsteered"] == answers["unsteered"]


def test_ask_reports_bad_input_without_a_traceback(model_dir):
    base = ["ask", "Q?", "--model", str(model_dir), "--heads", str(model_dir / "heads.json"), "--context", "abc"]
    missing = runner.invoke(app, [*base, "--emphasis", "xyz"])
    assert missing.exit_code == 2 and "'xyz' does not occur in the prompt" in missing.output
    bad_alpha = runner.invoke(app, [*base, "--alpha", "0"])
    assert bad_alpha.exit_code == 2 and "alpha must be > 0" in bad_alpha.output
    bad_generated = runner.invoke(app, [*base, "--steer-generated", "--generated-alpha", "0"])
    assert bad_generated.exit_code == 2 and "generated_alpha must be a number > 0" in bad_generated.output
    no_context = runner.invoke(app, ["ask", "Q?", "--model", str(model_dir)])
    assert no_context.exit_code != 0 and "--context" in no_context.output


def test_bench_measures_every_variant(model_dir):
    report = run_all(str(model_dir), [24], new_tokens=3, device="cpu", heads=str(model_dir / "heads.json"))
    variants = {r["variant"] for r in report["results"]}
    assert variants == {"unsteered", "steered", "dense_mask"}
    assert all(r["prompt_tokens"] == 24 and r["decode_tokens_per_s"] > 0 for r in report["results"])
    assert set(report["ratios"]) == {"steered@24", "dense_mask@24"}


def test_bench_failures_show_the_worker_error(model_dir):
    with pytest.raises(RuntimeError, match="ships no head set"):
        run_all(str(model_dir), [24], new_tokens=3, device="cpu", variants=["steered"])


def test_ratios_compare_against_unsteered_at_the_same_length():
    results = [
        {"variant": "unsteered", "prompt_tokens": 8, "decode_tokens_per_s": 10.0, "prefill_s": 1.0, "peak_memory_mb": 100.0},
        {"variant": "steered", "prompt_tokens": 8, "decode_tokens_per_s": 9.5, "prefill_s": 1.2, "peak_memory_mb": 105.0},
    ]
    assert ratios(results) == {
        "steered@8": {"decode_speed_ratio": 0.95, "prefill_time_ratio": 1.2, "peak_memory_ratio": 1.05}
    }
