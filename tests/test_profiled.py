"""Profiled head sets are found again by the model's identity; a model without one says how to get one;
a folder that is not a model says what it lacks."""

from __future__ import annotations

import shutil

import pytest
from tiny import char_tokenizer, tiny_model
from typer.testing import CliRunner

from pasta_rag import HeadSet, HeadSetError, ModelLoadError, PastaModel, emphasize, loading, profiled  # noqa: F401
from pasta_rag.cli import app

PROMPT = f"Context: {emphasize('the sky is green')}. Question: what colour is the sky? Answer:"


def saved_tiny(folder, seed: int = 0):
    tiny_model("llama", seed=seed).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def test_the_identity_follows_the_weights_not_the_path(tmp_path):
    first = saved_tiny(tmp_path / "a")
    copy = shutil.copytree(first, tmp_path / "elsewhere" / "b")
    other = saved_tiny(tmp_path / "c", seed=1)
    identity = profiled.model_identity(first)
    assert identity and identity == profiled.model_identity(copy)
    assert profiled.model_identity(other) != identity
    assert profiled.model_identity(tmp_path) is None  # no config, no weights: no identity


def test_a_profiled_set_is_found_next_time(tmp_path, monkeypatch):
    folder = saved_tiny(tmp_path / "tiny")
    monkeypatch.setenv(profiled.HEAD_SETS_ENV, str(tmp_path / "sets"))
    identity = profiled.model_identity(folder)
    written = profiled.save(identity, "context", HeadSet.from_pairs([(1, 2)], {"alpha": 0.2}))
    profiled.save(identity, "instructions", HeadSet.from_pairs([(0, 1)], {"alpha": 0.3}))
    assert written == tmp_path / "sets" / f"{identity}.json"
    model = PastaModel.from_pretrained(folder)
    assert model.identity == identity
    assert model.heads.pairs() == [(1, 2)] and model.alpha == 0.2
    assert model.resolve_heads("instructions").pairs() == [(0, 1)]
    assert model.generate(PROMPT, max_new_tokens=2).steered
    monkeypatch.setenv(profiled.HEAD_SETS_ENV, str(tmp_path / "empty"))
    assert PastaModel.from_pretrained(folder).heads is None


def test_a_model_without_a_set_names_the_command_and_an_estimate(tmp_path):
    folder = saved_tiny(tmp_path / "tiny")
    model = PastaModel.from_pretrained(folder)
    with pytest.raises(HeadSetError) as raised:
        model.generate(PROMPT, max_new_tokens=2)
    message = str(raised.value)
    assert f"pasta-rag profile --model {folder}" in message
    assert "an estimate: about" in message and "on this machine" in message
    with pytest.raises(HeadSetError, match="no 'instructions' head set"):
        model.resolve_heads("instructions")


def test_the_estimate_grows_with_the_model():
    small, large = tiny_model("llama"), tiny_model("qwen2")
    large.config.num_hidden_layers = 30  # more heads to rescore, same parameters
    assert profiled.estimate_profile_seconds(large, 1e9) > profiled.estimate_profile_seconds(small, 1e9) > 0
    assert profiled.measured_flops_per_second() > 1e6


def test_a_folder_that_is_not_a_model_says_what_it_lacks(tmp_path):
    with pytest.raises(ModelLoadError, match=r"lacks config\.json .*; weights .*; a tokenizer"):
        loading.load(tmp_path)
    folder = tmp_path / "weights-only"
    tiny_model("llama").save_pretrained(folder)
    with pytest.raises(ModelLoadError) as raised:
        loading.load(folder)
    assert "a tokenizer" in str(raised.value) and "config.json" not in str(raised.value)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="pass that file instead"):
        loading.load(tmp_path)
    result = CliRunner().invoke(app, ["ask", "Q?", "--context", "abc", "--model", str(tmp_path)])
    output = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2 and "is not a model folder" in output and "Traceback" not in output


@pytest.mark.real_model
def test_the_default_model_has_an_identity_keeps_its_shipped_sets_and_prefers_its_own(tmp_path, monkeypatch):
    from pasta_rag.heads import shipped_head_set

    model = PastaModel.from_pretrained("default")
    assert model.identity and model.heads == shipped_head_set(model.name)
    assert 60 < profiled.estimate_profile_seconds(model.model) < 7 * 24 * 3600
    monkeypatch.setenv(profiled.HEAD_SETS_ENV, str(tmp_path))
    profiled.save(model.identity, "context", HeadSet.from_pairs([(20, 1)], {"alpha": 0.05}))
    again = PastaModel.from_pretrained("default")
    assert again.heads.pairs() == [(20, 1)] and again.alpha == 0.05
    assert again.resolve_heads("instructions") == shipped_head_set(model.name, "instructions")
