"""Tiny random models and a character tokenizer, built in the test process (no files, no network)."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, models
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

import pasta_rag.steering  # noqa: F401  (registers the pasta_* attention implementations)
from pasta_rag import Steering

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)


SPECIALS = ["<pad>", "<s>", "</s>"]
CHARS = [c for c in string.printable if c not in "\x0b\x0c"]
VOCAB = len(SPECIALS) + len(CHARS)


def char_tokenizer(chat_template: str | None = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """One token per character, so character spans and token indices are easy to reason about."""
    vocab = {token: i for i, token in enumerate(SPECIALS + CHARS)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<pad>"))
    backend.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = chat_template
    return tokenizer


def _common(**extra) -> dict:
    return dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.2,
        **extra,
    )


CONFIGS = {
    "llama": lambda: LlamaConfig(**_common()),
    "qwen2": lambda: Qwen2Config(**_common()),
    "gemma3": lambda: Gemma3TextConfig(
        **_common(head_dim=32, sliding_window=5, layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    ),
    "gemma3-softcap": lambda: Gemma3TextConfig(
        **_common(
            head_dim=32,
            sliding_window=5,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            attn_logit_softcapping=3.0,
        )
    ),
}
ARCHITECTURES = ["llama", "qwen2", "gemma3", "gemma3-softcap"]


def tiny_model(architecture: str, attn_implementation: str = "pasta_sdpa", seed: int = 0):
    torch.manual_seed(seed)
    config = CONFIGS[architecture]()
    if architecture.endswith("softcap") and attn_implementation == "pasta_sdpa":
        attn_implementation = "pasta_eager"
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    # A random model may emit end-of-sequence at once; tests that want it set it themselves.
    model.generation_config.eos_token_id = None
    return model.eval()


STEERING_SAMPLES = {"heads": [0], "alpha": 0.05, "steer_generated": True, "generated_alpha": 1e-3, "enabled": False,
                    "select": "relevant", "groups": {"instructions": Steering(heads=[0], alpha=0.05)}}
"""One value per ``pasta_rag.Steering`` field that differs from its default, for the tests that show every
field reaches the core (core, LangChain, LlamaIndex): a field added without a sample here fails them."""


def saved_tiny_model(folder: Path, architecture: str = "llama") -> Path:
    """A tiny model and its tokenizer saved to ``folder``: what the command line loads as a local model."""
    tiny_model(architecture).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder
