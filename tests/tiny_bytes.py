"""A byte-level tokenizer (one token per byte, decoded exactly) and a tiny random model over it.

The character tokenizer of ``tiny.py`` has no decoder (its decoded text has spaces between tokens), so
JSON the model writes cannot be read back and the grammar library cannot learn its tokens' bytes.
Tool calling and constrained decoding are tested here instead: same tiny Llama, a real byte-level
vocabulary, nothing loaded from disk.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

import pasta_rag.steering  # noqa: F401  (registers the pasta_* attention implementations)

SPECIALS = ["<pad>", "<s>", "</s>"]
BYTE_VOCAB = len(SPECIALS) + 256

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)
TOOLS_TEMPLATE = (
    "{% if tools %}<s>tools: {% for t in tools %}{{ t['function']['name'] }};{% endfor %}\n{% endif %}"
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}"
    "{% if m['tool_calls'] %}{% for c in m['tool_calls'] %}[call {{ c['id'] }} {{ c['function']['name'] }} "
    "{{ c['function']['arguments'] | tojson }}]{% endfor %}{% endif %}"
    "{% if m['tool_call_id'] %} (for {{ m['tool_call_id'] }}){% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)
"""A template that renders tools and tool turns, as tool-capable models' templates do."""


def byte_tokenizer(chat_template: str | None = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    alphabet = [bytes_to_unicode()[b] for b in range(256)]
    vocab = {token: i for i, token in enumerate(SPECIALS + alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = chat_template
    return tokenizer


def byte_model(seed: int = 0, eos: bool = False):
    """A tiny random Llama over the byte vocabulary; ``eos=False`` keeps generation going to max_new_tokens."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=BYTE_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="pasta_sdpa", dtype=torch.float32)
    if not eos:
        model.generation_config.eos_token_id = None
    return model.eval()
