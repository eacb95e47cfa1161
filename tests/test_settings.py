"""Steering and SamplingSettings: one validated object each, and how a call's steering is resolved."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import pickle

import pytest
from tiny import STEERING_SAMPLES as SAMPLES
from tiny import char_tokenizer, tiny_model

from pasta_rag import (
    UNSET,
    HeadSet,
    HeadSetError,
    PastaError,
    PastaModel,
    SamplingSettings,
    Steering,
    SteeringError,
    emphasize,
)
from pasta_rag.settings import steering_keywords

PROMPT = f"Context: {emphasize('the sky is green')}. Question: what colour is the sky? Answer:"

@pytest.fixture(scope="module")
def model() -> PastaModel:
    return PastaModel(tiny_model("llama"), char_tokenizer(), heads=[1, 2], name="tiny-llama")


def test_every_steering_field_has_a_sample():
    assert set(SAMPLES) == {f.name for f in dataclasses.fields(Steering)}
    assert steering_keywords() == set(SAMPLES) | {"steer"}


@pytest.mark.parametrize(
    "field, bad, message",
    [
        ("alpha", 0, "alpha must be > 0"),
        ("alpha", True, "alpha must be > 0"),
        ("alpha", "0.01", "alpha must be > 0"),
        ("steer_generated", "yes", "steer_generated must be True, False or None"),
        ("steer_generated", 1, "steer_generated must be True, False or None"),
        ("generated_alpha", -1.0, "generated_alpha must be a number > 0"),
        ("generated_alpha", True, "generated_alpha must be a number > 0"),
        ("enabled", "no", "enabled .steer. must be True or False"),
        ("heads", 3, "heads must be a HeadSet"),
        ("select", "best", "select must be 'all'"),
    ],
)
def test_a_bad_value_is_refused_when_the_object_is_made(field, bad, message):
    with pytest.raises(SteeringError, match=message):
        Steering(**{field: bad})


def test_unset_is_inherited_and_none_means_one_thing():
    assert Steering().given() == {}
    assert Steering(alpha=None, heads=None, steer_generated=None, enabled=None).given() == {}  # no None of their own
    assert Steering(generated_alpha=None).given() == {"generated_alpha": None}  # None: the same as alpha
    assert Steering(alpha=1).alpha == 1.0 and isinstance(Steering(alpha=1).alpha, float)
    assert repr(UNSET) == "UNSET" and copy.deepcopy(UNSET) is UNSET and pickle.loads(pickle.dumps(UNSET)) is UNSET
    with pytest.raises(dataclasses.FrozenInstanceError):
        Steering().alpha = 0.1  # type: ignore[misc]


def test_override_replaces_only_what_is_set():
    base = Steering(alpha=0.1, steer_generated=True)
    assert base.override(Steering(alpha=0.2)) == Steering(alpha=0.2, steer_generated=True)
    assert base.override(alpha=UNSET, generated_alpha=None) == Steering(alpha=0.1, steer_generated=True,
                                                                       generated_alpha=None)
    assert base.override(alpha=None) == base  # None is UNSET for alpha
    assert base.override(Steering(alpha=0.2), alpha=0.3).alpha == 0.3  # keywords after the object
    with pytest.raises(SteeringError, match="alpha must be > 0"):
        base.override(alpha=-1)


def test_a_head_set_brings_the_settings_it_was_chosen_with():
    chosen = HeadSet.from_pairs([(0, 1)], {"alpha": 0.2, "steer_generated": True, "generated_alpha": None})
    assert Steering.from_head_set(chosen).given() == {"heads": chosen, "alpha": 0.2, "steer_generated": True,
                                                      "generated_alpha": None}
    assert Steering.from_head_set(HeadSet.from_pairs([(0, 1)])).given() == {"heads": HeadSet.from_pairs([(0, 1)])}
    with pytest.raises(HeadSetError, match="metadata 'alpha' is wrong: alpha must be > 0"):
        Steering.from_head_set(HeadSet.from_pairs([(0, 1)], {"alpha": 0}))


def test_a_call_resolves_given_then_head_set_then_model(model):
    chosen = {"heads": [0], "metadata": {"alpha": 0.2}}
    assert model.steering.given() == {"heads": model.heads, "alpha": 0.01, "steer_generated": False,
                                      "generated_alpha": None, "enabled": True, "select": "all"}
    assert model.resolve_steering(Steering()) == model.steering
    assert model.resolve_steering(Steering(heads=chosen)).alpha == 0.2  # the set's own
    assert model.resolve_steering(Steering(heads=chosen, alpha=0.3)).alpha == 0.3  # given wins
    assert model.resolve_steering(Steering(heads=[0], steer_generated=True)).heads == HeadSet.from_pairs(
        [(0, h) for h in range(model.num_heads)])  # resolved against the model
    with pytest.raises(HeadSetError, match="layers 0..2"):
        model.resolve_steering(Steering(heads=[7]))


def test_steering_object_and_keywords_are_one_call(model):
    for name, value in SAMPLES.items():
        keyword = "steer" if name == "enabled" else name
        by_object = model.score(PROMPT, " green", steering=Steering(**{name: value}))
        assert by_object == model.score(PROMPT, " green", **{keyword: value}), name
    steered = model.generate(PROMPT, max_new_tokens=6, steering=Steering(alpha=0.05))
    assert steered.text == model.generate(PROMPT, max_new_tokens=6, alpha=0.05).text
    assert model.generate(PROMPT, max_new_tokens=6, steering=Steering(alpha=0.05), alpha=0.01).text == model.generate(
        PROMPT, max_new_tokens=6).text  # a keyword overrides the object
    with pytest.raises(SteeringError, match="steering must be a pasta_rag.Steering"):
        model.generate(PROMPT, steering={"alpha": 0.1})
    with pytest.raises(TypeError, match="Unknown keyword argument.*'max_tokens'"):
        model.generate(PROMPT, max_tokens=3)
    with pytest.raises(TypeError, match="settings= or decoding keywords"):
        model.generate(PROMPT, settings=SamplingSettings(max_new_tokens=2), max_new_tokens=3)


def test_every_steering_field_changes_what_is_computed(model):
    """Each field reaches the attention: setting it alone moves the score (or, for enabled, turns steering off)."""
    # both groups emphasized, and two context passages of which one is about the question
    prompt = emphasize("Answer in one word.", "instructions") + " " + emphasize("grass is purple") + " " + PROMPT
    plain = model.score(prompt, " green and blue", steer=False)
    for name, value in SAMPLES.items():
        base = Steering(steer_generated=name != "steer_generated", generated_alpha=0.5,  # where the field matters
                        groups={"instructions": Steering(heads=[0], alpha=0.5)})
        baseline = model.score(prompt, " green and blue", steering=base)
        score = model.score(prompt, " green and blue", steering=base.override(**{name: value}))
        assert score != pytest.approx(baseline, abs=1e-5), name
    assert model.score(prompt, " green and blue", steer=False, alpha=0.5) == plain


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"min_new_tokens": 5, "max_new_tokens": 2}, "min_new_tokens must be between 0 and max_new_tokens"),
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"top_p": 0}, "top_p must be in"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"top_k": 0}, "top_k must be at least 1"),
        ({"repetition_penalty": 0}, "repetition_penalty must be > 0"),
        ({"stop": ["ok", ""]}, "stop must be non-empty strings"),
        ({"seed": "7"}, "seed must be an int"),
        ({"max_new_tokens": True}, "max_new_tokens must be at least 1"),
    ],
)
def test_bad_sampling_settings_are_refused(settings, message):
    with pytest.raises(PastaError, match=message):
        SamplingSettings(**settings)


def test_stop_takes_one_string_or_many():
    assert SamplingSettings(stop="\n").stop == ("\n",)
    assert SamplingSettings(stop=None).stop == () and SamplingSettings(stop=["a", "b"]).stop == ("a", "b")


def test_astream_joins_to_generate(model):
    async def collect() -> tuple[str, object]:
        stream = model.astream(PROMPT, max_new_tokens=8, alpha=0.05)
        return "".join([chunk async for chunk in stream]), stream.generation

    text, generation = asyncio.run(collect())
    expected = model.generate(PROMPT, max_new_tokens=8, alpha=0.05)
    assert text == expected.text and generation == expected
    with pytest.raises(SteeringError):
        model.astream(PROMPT, alpha=0)  # bad input raises at the call, before any thread


def test_shared_loads_once_per_source_and_options(monkeypatch, model):
    loads: list[tuple] = []

    def from_pretrained(source, **options):
        loads.append((source, options))
        return model

    monkeypatch.setattr(PastaModel, "from_pretrained", from_pretrained)
    monkeypatch.setattr(PastaModel, "_shared", {})
    assert PastaModel.shared("tiny") is PastaModel.shared("tiny") is model
    PastaModel.shared("tiny", dtype="float32")
    assert loads == [("tiny", {}), ("tiny", {"dtype": "float32"})]
    with pytest.raises(TypeError, match="loading options only.*'alpha'"):
        PastaModel.shared("tiny", alpha=0.1)
