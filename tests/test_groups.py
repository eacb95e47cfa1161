"""Emphasis groups in the engine: the context group and the instructions group (or yours), each steered with
its own head set and settings, in one call."""

from __future__ import annotations

import pytest
from tiny import char_tokenizer, tiny_model

from pasta_rag import EmphasisError, HeadSet, HeadSetError, PastaModel, Steering, SteeringError, emphasize
from pasta_rag.batching import prepare
from pasta_rag.emphasis import GROUP_MARKERS, parse_groups
from pasta_rag.settings import SamplingSettings

DOCUMENT = "the sky is green"
INSTRUCTION = "Answer in one word."
PROMPT = f"{emphasize(INSTRUCTION, 'instructions')} Context: {emphasize(DOCUMENT)}. Question: the sky? Answer:"
GROUPS = {"instructions": Steering(heads={"0": [0, 1]}, alpha=0.1)}


@pytest.fixture(scope="module")
def model() -> PastaModel:
    return PastaModel(tiny_model("llama"), char_tokenizer(), heads={"0": [1], "1": [0, 2]}, name="tiny-llama")


def states(model: PastaModel, prompt=PROMPT, **steering):
    return prepare(model, [prompt], None, None, Steering(**steering), SamplingSettings(max_new_tokens=1)).states


def test_each_group_is_steered_with_its_own_heads_and_alpha(model):
    instructions, context = states(model, groups=GROUPS)
    assert instructions.alpha == 0.1 and context.alpha == model.alpha
    # the instructions group claims head (0, 1) first, so the context group keeps only its other heads
    assert instructions.heads.pairs() == [(0, 0), (0, 1)] and context.heads.pairs() == [(1, 0), (1, 2)]
    text = model.render(PROMPT).text
    assert text[slice(*model.render(PROMPT).groups["instructions"][0])] == INSTRUCTION
    assert instructions.emphasized.sum() == len(INSTRUCTION) and context.emphasized.sum() == len(DOCUMENT)


def test_the_second_group_changes_the_answer_and_alone_is_not_the_first(model):
    both = model.score(PROMPT, " green", groups=GROUPS)
    only_context = model.score(PROMPT.replace("\ue002", "").replace("\ue003", ""), " green")
    assert both != pytest.approx(only_context, abs=1e-5)
    assert model.score(PROMPT, " green", steer=False) == model.score(model.render(PROMPT).text, " green", steer=False)


def test_substrings_and_markers_name_the_same_group(model):
    plain = model.render(PROMPT).text
    by_substring = model.render(plain, emphasis={"instructions": [INSTRUCTION], "context": [DOCUMENT]})
    assert by_substring == model.render(PROMPT)
    assert model.score(plain, " green", emphasis={"instructions": [INSTRUCTION], "context": [DOCUMENT]},
                       groups=GROUPS) == pytest.approx(model.score(PROMPT, " green", groups=GROUPS), abs=1e-6)


def test_the_default_instructions_group_uses_the_models_instructions_set(model, monkeypatch):
    shipped = {"instructions": HeadSet.from_pairs([(2, 3)], {"alpha": 0.3})}
    monkeypatch.setattr("pasta_rag.engine.shipped_head_set", lambda name, purpose="context": shipped.get(purpose))
    instructions, _ = states(model)
    assert instructions.heads.pairs() == [(2, 3)] and instructions.alpha == 0.3
    instructions, _ = states(model, groups={"instructions": Steering(alpha=0.05)})  # that set, another alpha
    assert instructions.heads.pairs() == [(2, 3)] and instructions.alpha == 0.05
    monkeypatch.setattr("pasta_rag.engine.shipped_head_set", lambda name, purpose="context": None)
    with pytest.raises(HeadSetError, match="ships no 'instructions' head set"):
        states(model)


def test_a_group_of_your_own_needs_settings(model):
    plain = model.render(PROMPT).text
    with pytest.raises(HeadSetError, match="group 'quotes', which has no settings"):
        model.generate(plain, emphasis={"quotes": [DOCUMENT]}, max_new_tokens=1)
    (quotes,) = prepare(model, [plain], [{"quotes": [DOCUMENT]}], None,
                        Steering(groups={"quotes": Steering(heads=[2])}), SamplingSettings(max_new_tokens=1)).states
    assert quotes.heads.pairs() == [(2, h) for h in range(model.num_heads)]


def test_overlapping_groups_each_steer_their_own_heads(model):
    """A token in two groups is emphasized in both groups' heads: spans of different groups never compete."""
    start, end = GROUP_MARKERS["instructions"]  # emphasize() would strip the inner markers: it trusts no text
    overlapping = f"{start}Answer {emphasize(DOCUMENT)}{end}. Answer:"
    _, spans = parse_groups(overlapping)
    assert spans["context"][0][0] > spans["instructions"][0][0]
    instructions, context = states(model, overlapping, groups=GROUPS)
    assert (instructions.emphasized & context.emphasized).sum() == len(DOCUMENT)


def test_switching_off(model):
    assert states(model, enabled=False, groups=GROUPS) == ()
    off = {"instructions": Steering(heads={"0": [0, 1]}, enabled=False)}
    (context,) = states(model, groups=off)  # that group off, the context group on
    assert context.heads == model.heads


def test_bad_groups_are_clear_errors():
    with pytest.raises(SteeringError, match="context group's settings are the Steering's own fields"):
        Steering(groups={"context": Steering(alpha=0.1)})
    with pytest.raises(SteeringError, match="without groups of its own"):
        Steering(groups={"instructions": Steering(groups={"x": Steering()})})
    with pytest.raises(SteeringError, match="groups must map group names"):
        Steering(groups=[Steering()])
    with pytest.raises(EmphasisError, match="Unknown emphasis group 'quotes'"):
        emphasize("x", "quotes")
    with pytest.raises(EmphasisError, match="never closed"):
        parse_groups("\ue002open")
