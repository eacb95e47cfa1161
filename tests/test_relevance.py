"""select='relevant': of the emphasized passages, only those the question is about are steered."""

from __future__ import annotations

import pytest
from tiny import char_tokenizer, tiny_model

from pasta_rag import PastaModel, Steering, emphasize
from pasta_rag.batching import prepare
from pasta_rag.relevance import relevant_spans
from pasta_rag.settings import SamplingSettings

PASSAGES = [
    "Thailand lies in South-eastern Asia. Its capital city is Bangkok.",
    "Jordan is a country in Western Asia. Its capital is Harare.",
    "The capital of Armenia, in Western Asia, is Yerevan.",
    "Georgia is a country in Western Asia, and its capital is Tbilisi.",
]
QUESTION = "Question: What is the capital of Jordan?"


def spans_of(text: str, passages: list[str]) -> list[tuple[int, int]]:
    return [(text.index(p), text.index(p) + len(p)) for p in passages]


def test_the_passage_the_question_is_about_is_kept_wherever_it_is_ranked():
    for rotation in range(len(PASSAGES)):
        ranked = PASSAGES[rotation:] + PASSAGES[:rotation]  # the relevant passage at every rank
        text = "Context:\n" + "\n\n".join(ranked) + "\n\n" + QUESTION
        (kept,) = relevant_spans(text, spans_of(text, ranked))
        assert text[slice(*kept)] == PASSAGES[1]


def test_passages_close_to_the_best_are_kept_with_a_lower_share():
    passages = PASSAGES + ["Jordan's capital is also called the city of seven hills; Harare is in Jordan."]
    text = "\n\n".join(passages) + "\n\n" + QUESTION
    kept = [text[s:e] for s, e in relevant_spans(text, spans_of(text, passages), share=0.5)]
    assert kept == [PASSAGES[1], passages[-1]]
    (best,) = relevant_spans(text, spans_of(text, passages))  # the default keeps the best one only
    assert text[slice(*best)] in kept


def test_copies_of_the_relevant_passage_all_win_over_a_passage_sharing_a_common_word():
    """Three copies name the question's subject; only the unrelated passage has "currency". Indexed three
    times, the subject would look common and weigh less than "currency": the copies count once."""
    relevant = "In Ukraine, people pay with the Norwegian Krone."
    unrelated = "The capital of Armenia, in Western Asia, is Yerevan. Its currency is the Armenian Dram."
    passages = [relevant, f"Encyclopedia entry: {relevant}", unrelated, f"Travel guide: {relevant}"]
    text = "Context:\n" + "\n\n".join(passages) + "\n\nQuestion: What currency is used in Ukraine?"
    kept = [text[s:e] for s, e in relevant_spans(text, spans_of(text, passages))]
    assert kept == [p for p in passages if p != unrelated]
    # not copies: passages that share some words but say other things are ranked apart
    others = [relevant, "Ukraine lies in Eastern Europe. Its capital city is Kyiv.", unrelated]
    text = "\n\n".join(others) + "\n\nQuestion: What currency is used in Ukraine?"
    assert len(relevant_spans(text, spans_of(text, others))) == 1


def test_one_span_stays_and_no_question_falls_back_to_the_first():
    text = "\n\n".join(PASSAGES)
    assert relevant_spans(text, spans_of(text, PASSAGES[:1])) == spans_of(text, PASSAGES[:1])
    with pytest.warns(UserWarning, match="no word of the question"):
        assert relevant_spans(text + "\n\nzebra?", spans_of(text, PASSAGES)) == spans_of(text, PASSAGES[:1])


def test_passages_with_no_word_to_rank_fall_back_to_the_first():
    text = "x\n\nof the\n\nWhere is it?"
    spans = [(0, 1), (3, 9)]
    with pytest.warns(UserWarning, match="no word of the question"):
        assert relevant_spans(text, spans) == [(0, 1)]


def test_the_engine_steers_only_the_selected_passages():
    model = PastaModel(tiny_model("llama"), char_tokenizer(), heads=[1], name="tiny")
    prompt = "Context: " + " ".join(emphasize(p) for p in PASSAGES) + " " + QUESTION
    settings = SamplingSettings(max_new_tokens=1)
    every = prepare(model, [prompt], None, None, Steering(), settings).state.emphasized.sum()
    chosen = prepare(model, [prompt], None, None, Steering(select="relevant"), settings).state.emphasized.sum()
    assert every == sum(len(p) for p in PASSAGES) and chosen == len(PASSAGES[1])
    # other groups keep every span unless their own settings select
    marked = emphasize(PASSAGES[0], "instructions") + emphasize(PASSAGES[1], "instructions") + " " + prompt
    groups = {"instructions": Steering(heads=[0])}
    instructions, _ = prepare(model, [marked], None, None, Steering(select="relevant", groups=groups), settings).states
    assert instructions.emphasized.sum() == len(PASSAGES[0]) + len(PASSAGES[1])
