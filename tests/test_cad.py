"""Context-aware decoding baseline against a direct computation on a tiny model."""

from __future__ import annotations

import pytest
import torch
from tiny import char_tokenizer, tiny_model

from pasta_rag import PastaModel
from pasta_rag.research.cad import generate_cad, score_cad

WITH = ["Context: the sky is green. Question: what colour is the sky?", "Context: grass is blue. Question: grass?"]
WITHOUT = ["Question: what colour is the sky?", "Question: grass?"]


@pytest.fixture(scope="module")
def model() -> PastaModel:
    return PastaModel(tiny_model("llama"), char_tokenizer(), heads=[1])


def last_logits(model: PastaModel, text: str) -> torch.Tensor:
    ids = torch.tensor([model.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return model.model(input_ids=ids).logits[0, -1]


def test_weight_zero_is_the_plain_model(model):
    cad = generate_cad(model, WITH, WITHOUT, weight=0.0, max_new_tokens=6)
    plain = model.generate_batch(WITH, steer=False, max_new_tokens=6)
    assert [g.text for g in cad] == [g.text for g in plain]
    assert score_cad(model, WITH[0], WITHOUT[0], " green", weight=0.0) == pytest.approx(
        model.score(WITH[0], " green", steer=False), abs=1e-4
    )


def test_cad_tokens_match_a_direct_contrast_of_full_recomputes(model):
    weight = 1.0
    cad = generate_cad(model, WITH, WITHOUT, weight=weight, max_new_tokens=5)
    for with_context, without, generation in zip(WITH, WITHOUT, cad):
        text, tokens = "", []
        for _ in range(5):
            contrast = (1 + weight) * last_logits(model, with_context + text) - weight * last_logits(model, without + text)
            tokens.append(int(contrast.argmax()))
            text += model.tokenizer.convert_ids_to_tokens(tokens[-1])  # one character per token
        assert generation.text == model.tokenizer.decode(tokens, skip_special_tokens=True)
    assert [g.text for g in cad] != [g.text for g in model.generate_batch(WITH, steer=False, max_new_tokens=5)]


def test_cad_score_is_a_normalized_log_probability(model):
    score = score_cad(model, WITH[0], WITHOUT[0], "g", weight=0.5)
    contrast = 1.5 * last_logits(model, WITH[0]) - 0.5 * last_logits(model, WITHOUT[0])
    expected = contrast.log_softmax(-1)[model.tokenizer("g", add_special_tokens=False)["input_ids"][0]]
    assert score == pytest.approx(float(expected), abs=1e-4)
