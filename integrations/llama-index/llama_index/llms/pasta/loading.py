"""Where PastaLLM's model comes from: the core's process-wide cache, and LlamaIndex's global tokenizer."""

from __future__ import annotations

import os
from typing import Any

from pasta_rag import PastaModel
from pasta_rag.remote import RemoteModel


def load_shared_model(source: str | os.PathLike = "default", **load_kwargs: Any) -> PastaModel:
    """The model loaded once per process for ``source`` and these loading options (``PastaModel.shared``).

    The core holds the one cache, so ``PastaLLM()`` here, ``Settings.llm = PastaLLM()`` elsewhere and
    LangChain's ``ChatPasta()`` in the same process share one copy of the weights. ``load_kwargs`` go to
    ``PastaModel.from_pretrained`` (``device``, ``dtype``, ...); steering is per call, not a loading option.
    """
    return PastaModel.shared(source, **load_kwargs)


def core_model(
    model: PastaModel | str | os.PathLike | None, model_name: str, model_kwargs: dict[str, Any]
) -> PastaModel:
    """An already-loaded PastaModel as it is (shared, not copied), else the shared one for the name or path."""
    if isinstance(model, PastaModel):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        return load_shared_model(model_name if model is None else model, **model_kwargs)
    raise TypeError(
        f"model must be a pasta_rag.PastaModel, a model name or a path; got {type(model).__name__}. "
        "To wrap a transformers model, build PastaModel(model, tokenizer) first."
    )


def remote_model(model: Any, fields: dict[str, Any]) -> RemoteModel:
    """The server at ``fields["base_url"]``; ``model`` (or ``model_name``), if given, is its served name."""
    if isinstance(model, PastaModel) or fields.get("model_kwargs"):
        raise ValueError("base_url runs the model on a server: pass no loaded model and no model_kwargs with it.")
    return RemoteModel(fields["base_url"], api_key=fields.get("api_key"), timeout=fields.get("timeout"),
                       max_retries=fields.get("max_retries", 2), model=fields.get("model_name"))


def use_model_tokenizer(core: PastaModel) -> None:
    """Count LlamaIndex's prompt-packing tokens with this model's tokenizer, unless one is set already."""
    import llama_index.core
    from llama_index.core import Settings

    if llama_index.core.global_tokenizer is None:
        Settings.tokenizer = core.tokenizer
