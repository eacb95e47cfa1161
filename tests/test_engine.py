"""PastaModel on a tiny random model with a character tokenizer: prompts, emphasis, generate, stream, score."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from tiny import char_tokenizer, tiny_model

from pasta_rag import (
    ContextWindowError,
    EmphasisError,
    HeadSet,
    HeadSetError,
    PastaModel,
    SamplingSettings,
    SteeringError,
    emphasize,
)
from pasta_rag.batching import prepare
from pasta_rag.prompts import CHAT_TEMPLATE_FORMAT, PLAIN_FORMAT
from pasta_rag.settings import Steering

PROMPT = f"Context: {emphasize('the sky is green')}. Question: what colour is the sky? Answer:"


@pytest.fixture(scope="module")
def model() -> PastaModel:
    return PastaModel(tiny_model("llama"), char_tokenizer(), heads=[1, 2], name="tiny-llama")


def test_markers_substrings_and_spans_resolve_to_the_same_tokens(model):
    plain = PROMPT.replace("\ue000", "").replace("\ue001", "")
    start = plain.index("the sky is green")
    by_marker = model.render(PROMPT)
    by_substring = model.render(plain, emphasis=["the sky is green"])
    by_span = model.render(plain, spans=[(start, start + len("the sky is green"))])
    assert by_marker == by_substring == by_span
    assert by_marker.text == plain


def test_chat_spans_are_found_after_the_template(model):
    rendered = model.render([{"role": "user", "content": "Use " + emphasize("doc")}])
    assert rendered.format == CHAT_TEMPLATE_FORMAT
    assert rendered.text == "<s>user: Use doc\n<s>assistant:"
    assert [rendered.text[s:e] for s, e in rendered.spans] == ["doc"]
    assert not rendered.add_special_tokens


def test_models_without_chat_template_use_a_plain_format():
    base = PastaModel(tiny_model("llama"), char_tokenizer(chat_template=None), heads=[1])
    rendered = base.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert rendered.format == PLAIN_FORMAT
    assert rendered.text == "System: Be brief.\n\nUser: Hi\n\nAssistant:"


def test_steering_changes_the_answer_and_steer_false_is_the_plain_model(model):
    steered = model.score(PROMPT, " green")
    unsteered = model.score(PROMPT, " green", steer=False)
    assert steered != pytest.approx(unsteered, abs=1e-3)
    plain_model = PastaModel(tiny_model("llama", "sdpa"), char_tokenizer(), heads=[1, 2])
    assert unsteered == pytest.approx(plain_model.score(PROMPT, " green", steer=False), abs=1e-5)
    assert model.generate(PROMPT, steer=False, max_new_tokens=12).text == plain_model.generate(
        PROMPT, steer=False, max_new_tokens=12
    ).text


def test_generate_reports_tokens_and_reason(model):
    result = model.generate(PROMPT, max_new_tokens=7)
    assert result.steered
    assert result.prompt_tokens == len(model.render(PROMPT).text)  # one token per character
    assert result.completion_tokens == 7 and result.finish_reason == "length"


def test_end_of_sequence_ends_the_answer():
    model = PastaModel(tiny_model("llama"), char_tokenizer(), heads=[1, 2])
    prompt_ids = torch.tensor([model.tokenizer(model.render(PROMPT).text)["input_ids"]])
    with torch.no_grad():
        tokens = model.model.generate(prompt_ids, max_new_tokens=6, do_sample=False)[0, prompt_ids.shape[1] :].tolist()
    assert tokens[3] not in tokens[:3]
    model.model.generation_config.eos_token_id = tokens[3]
    result = model.generate(PROMPT, max_new_tokens=6, steer=False)
    assert result.finish_reason == "stop" and result.completion_tokens == 4
    assert result.text == model.tokenizer.decode(tokens[:3], skip_special_tokens=True)
    assert "".join(model.stream(PROMPT, max_new_tokens=6, steer=False)) == result.text


def test_stream_yields_the_generated_text_token_by_token(model):
    stream = model.stream(PROMPT, max_new_tokens=12)
    assert stream.generation is None
    chunks = list(stream)
    assert len(chunks) > 1
    assert "".join(chunks) == model.generate(PROMPT, max_new_tokens=12).text
    assert stream.generation == model.generate(PROMPT, max_new_tokens=12)


def test_stream_raises_bad_input_before_any_token(model):
    with pytest.raises(EmphasisError):
        model.stream("a prompt", emphasis=["missing"])


def test_multi_token_stop_strings_end_generate_and_stream_alike(model):
    full = model.generate(PROMPT, max_new_tokens=24).text
    stop = full[5:8]  # three characters, so three tokens
    assert len(stop) == 3
    cut = full[: full.index(stop)]
    result = model.generate(PROMPT, max_new_tokens=24, stop=[stop])
    assert result.text == cut and result.finish_reason == "stop"
    assert result.completion_tokens < 24
    assert "".join(model.stream(PROMPT, max_new_tokens=24, stop=[stop])) == cut


def test_a_batch_equals_its_prompts_run_one_by_one(model):
    prompts = [PROMPT, "Short one: " + emphasize("x"), [{"role": "user", "content": emphasize("hello") + " there"}]]
    batch = model.generate_batch(prompts, max_new_tokens=8)
    single = [model.generate(p, max_new_tokens=8) for p in prompts]
    assert [b.text for b in batch] == [s.text for s in single]
    assert [b.prompt_tokens for b in batch] == [s.prompt_tokens for s in single]


def test_sampling_is_reproducible_with_a_seed(model):
    first = model.generate(PROMPT, max_new_tokens=10, temperature=1.0, seed=3).text
    again = model.generate(PROMPT, max_new_tokens=10, temperature=1.0, seed=3).text
    assert first == again


def test_two_threads_get_their_own_steering(model):
    other = f"Context: the sky is green. Question: {emphasize('what colour is the sky?')} Answer:"
    expected = {PROMPT: model.generate(PROMPT, max_new_tokens=10).text, other: model.generate(other, max_new_tokens=10).text}
    seen: dict[str, list[str]] = {PROMPT: [], other: []}

    def work(prompt: str) -> None:
        for _ in range(3):
            seen[prompt].append(model.generate(prompt, max_new_tokens=10).text)

    threads = [threading.Thread(target=work, args=(p,)) for p in (PROMPT, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {p: [text] * 3 for p, text in expected.items()}


def test_closing_a_stream_early_stops_generation(model):
    stream = model.stream(PROMPT, max_new_tokens=200)
    next(stream)
    stream.close()  # joins the worker; would hang or leak if cancellation did not work


def test_nothing_emphasized_warns_and_runs_unsteered(model):
    with pytest.warns(UserWarning, match="nothing is emphasized"):
        result = model.generate("no marks here", max_new_tokens=4)
    assert not result.steered
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.generate("no marks here", max_new_tokens=4, steer=False)


def test_bad_input_is_explained(model):
    with pytest.raises(EmphasisError, match="does not occur in the prompt"):
        model.generate("a prompt", emphasis=["missing"], max_new_tokens=2)
    with pytest.raises(SteeringError, match="alpha must be > 0"):
        model.generate(PROMPT, alpha=-1, max_new_tokens=2)
    for bad in (True, "0.01"):  # a bool is not a scale (True would mean alpha 1: no steering), nor is a string
        with pytest.raises(SteeringError, match="alpha must be > 0"):
            model.generate(PROMPT, alpha=bad, max_new_tokens=2)
    with pytest.raises(SteeringError, match="alpha must be > 0"):  # checked even when nothing is steered
        model.generate(PROMPT, alpha=0, steer=False, max_new_tokens=2)
    with pytest.raises(HeadSetError, match="metadata 'alpha' is wrong: alpha must be > 0"):
        model.generate(PROMPT, heads={"heads": [1], "metadata": {"alpha": -1}}, max_new_tokens=2)
    with pytest.raises(HeadSetError, match="empty"):
        model.generate(PROMPT, heads={}, max_new_tokens=2)
    with pytest.raises(HeadSetError, match="layers 0..2"):
        model.generate(PROMPT, heads=[7], max_new_tokens=2)
    with pytest.raises(ContextWindowError, match="reads at most 512"):
        model.generate(PROMPT * 10, max_new_tokens=2)
    with pytest.raises(ContextWindowError):
        model.generate(PROMPT, max_new_tokens=500)


def test_a_model_without_a_head_set_says_how_to_get_one():
    bare = PastaModel(tiny_model("llama"), char_tokenizer(), name="unknown-model")
    with pytest.raises(HeadSetError, match="ships no head set for 'unknown-model'"):
        bare.generate(PROMPT, max_new_tokens=2)
    assert bare.generate(PROMPT, max_new_tokens=2, heads=[0]).steered


def test_user_loaded_models_are_switched_to_steerable_attention():
    model = PastaModel(tiny_model("qwen2", "sdpa"), char_tokenizer(), heads=[0])
    assert model.model.config._attn_implementation == "pasta_sdpa"
    softcapped = PastaModel(tiny_model("gemma3-softcap", "sdpa"), char_tokenizer(), heads=[0])
    assert softcapped.model.config._attn_implementation == "pasta_eager"
    flash = tiny_model("llama", "sdpa")
    flash.config._attn_implementation = "flash_attention_2"
    with pytest.raises(SteeringError, match="cannot steer attn_implementation='flash_attention_2'"):
        PastaModel(flash, char_tokenizer())


@pytest.mark.parametrize("architecture", ["gemma3", "qwen2"])
def test_other_architectures_generate_and_stream(architecture):
    model = PastaModel(tiny_model(architecture), char_tokenizer(), heads=[0, 2])
    text = model.generate(PROMPT, max_new_tokens=10).text
    assert "".join(model.stream(PROMPT, max_new_tokens=10)) == text
    assert torch.isfinite(torch.tensor(model.score(PROMPT, " green")))


def test_alpha_comes_from_the_head_set_unless_given():
    heads = {"heads": [1], "metadata": {"alpha": 0.2}}
    assert PastaModel(tiny_model("llama"), char_tokenizer(), heads=heads).alpha == 0.2
    assert PastaModel(tiny_model("llama"), char_tokenizer(), heads=heads, alpha=0.05).alpha == 0.05
    assert PastaModel(tiny_model("llama"), char_tokenizer(), heads=[1]).alpha == 0.01


def test_a_per_call_head_set_brings_its_own_alpha():
    model = PastaModel(tiny_model("llama"), char_tokenizer(), heads=[1])
    own = model.score(PROMPT, " green", heads={"heads": [0], "metadata": {"alpha": 0.2}})
    assert own == pytest.approx(model.score(PROMPT, " green", heads=[0], alpha=0.2), abs=1e-6)
    assert own != pytest.approx(model.score(PROMPT, " green", heads=[0]), abs=1e-4)  # not the model's 0.01


def test_steering_generated_keys_comes_from_the_head_set_unless_given():
    heads = {"heads": [1, 2], "metadata": {"steer_generated": True}}
    chosen_so = PastaModel(tiny_model("llama"), char_tokenizer(), heads=heads)
    assert chosen_so.steer_generated and not PastaModel(tiny_model("llama"), char_tokenizer(), heads=[1]).steer_generated
    assert not PastaModel(tiny_model("llama"), char_tokenizer(), heads=heads, steer_generated=False).steer_generated
    # the answer's keys are steered like generated ones: with it, scoring the same continuation changes
    paper = PastaModel(chosen_so.model, chosen_so.tokenizer, heads=[1, 2], steer_generated=False)
    assert chosen_so.score(PROMPT, " green and blue") != pytest.approx(paper.score(PROMPT, " green and blue"), abs=1e-4)
    # a per-call head set brings its own choice, as it brings its alpha
    per_call = paper.score(PROMPT, " green and blue", heads=heads)
    assert per_call == pytest.approx(chosen_so.score(PROMPT, " green and blue"), abs=1e-6)
    with pytest.raises(HeadSetError, match="steer_generated"):
        PastaModel(tiny_model("llama"), char_tokenizer(), heads={"heads": [1], "metadata": {"steer_generated": "yes"}})


def test_steering_generated_keys_can_be_chosen_per_call():
    paper = PastaModel(tiny_model("llama"), char_tokenizer(), heads=[1, 2])
    chosen_so = PastaModel(paper.model, paper.tokenizer, heads=[1, 2], steer_generated=True)
    answer = " green and blue"
    # per call it is what the constructor argument is: same score, same greedy tokens, same stream
    per_call = paper.score(PROMPT, answer, steer_generated=True)
    assert per_call == pytest.approx(chosen_so.score(PROMPT, answer), abs=1e-6)
    assert per_call != pytest.approx(paper.score(PROMPT, answer), abs=1e-4)
    generated = paper.generate(PROMPT, max_new_tokens=12, steer_generated=True).text
    assert generated == chosen_so.generate(PROMPT, max_new_tokens=12).text
    assert generated != paper.generate(PROMPT, max_new_tokens=12).text  # the default (False) answers otherwise
    assert "".join(paper.stream(PROMPT, max_new_tokens=12, steer_generated=True)) == generated
    batch = paper.generate_batch([PROMPT, PROMPT], max_new_tokens=12, steer_generated=True)
    assert [g.text for g in batch] == [generated, generated]
    # ... and it works both ways, over the model's and over a per-call head set's choice
    assert chosen_so.score(PROMPT, answer, steer_generated=False) == pytest.approx(
        paper.score(PROMPT, answer), abs=1e-6)
    heads = {"heads": [1, 2], "metadata": {"steer_generated": True}}
    assert paper.score(PROMPT, answer, heads=heads, steer_generated=False) == pytest.approx(
        paper.score(PROMPT, answer), abs=1e-6)
    settings = SamplingSettings(max_new_tokens=1)

    def state(model: PastaModel, **kwargs):
        return prepare(model, [PROMPT], None, None, Steering(**kwargs), settings).state

    assert state(paper, steer_generated=True).steer_generated is True
    assert state(chosen_so, steer_generated=False).steer_generated is False
    # None keeps today's choice: the model's, or a per-call head set's own
    assert state(paper).steer_generated is False and state(chosen_so).steer_generated is True
    assert state(paper, heads=heads).steer_generated is True
    assert state(chosen_so, heads=[1, 2]).steer_generated is True  # a set without the metadata: the model's
    for bad in ("yes", 1, 0.0):
        with pytest.raises(SteeringError, match="steer_generated must be True, False or None"):
            paper.generate(PROMPT, max_new_tokens=2, steer_generated=bad)
    with pytest.raises(SteeringError, match="steer_generated"):
        paper.stream(PROMPT, max_new_tokens=2, steer_generated="no")
    with pytest.raises(SteeringError, match="steer_generated"):
        paper.score(PROMPT, answer, steer_generated=1)
    with pytest.raises(SteeringError, match="steer_generated"):
        PastaModel(paper.model, paper.tokenizer, heads=[1, 2], steer_generated="yes")


def test_generated_alpha_comes_from_the_head_set_unless_given():
    """With steer_generated, generated keys get log(generated_alpha); None everywhere means alpha."""
    chosen = {"heads": [1, 2], "metadata": {"steer_generated": True, "generated_alpha": 1e-4}}
    model = PastaModel(tiny_model("llama"), char_tokenizer(), heads=chosen)
    same_as_alpha = PastaModel(model.model, model.tokenizer, heads=[1, 2], steer_generated=True)
    answer = " green and blue"
    assert model.generated_alpha == 1e-4 and same_as_alpha.generated_alpha is None
    assert PastaModel(model.model, model.tokenizer, heads=chosen, generated_alpha=0.5).generated_alpha == 0.5
    # it changes what is computed, and per call it equals the constructor argument
    assert model.score(PROMPT, answer) != pytest.approx(same_as_alpha.score(PROMPT, answer), abs=1e-4)
    assert same_as_alpha.score(PROMPT, answer, generated_alpha=1e-4) == pytest.approx(model.score(PROMPT, answer),
                                                                                     abs=1e-6)
    assert model.score(PROMPT, answer, generated_alpha=0.01) == pytest.approx(same_as_alpha.score(PROMPT, answer),
                                                                             abs=1e-6)  # 0.01: the alpha
    assert same_as_alpha.score(PROMPT, answer, heads=chosen) == pytest.approx(model.score(PROMPT, answer), abs=1e-6)
    generated = same_as_alpha.generate(PROMPT, max_new_tokens=12, generated_alpha=1e-4).text
    assert generated == model.generate(PROMPT, max_new_tokens=12).text
    assert "".join(same_as_alpha.stream(PROMPT, max_new_tokens=12, generated_alpha=1e-4)) == generated
    batch = same_as_alpha.generate_batch([PROMPT, PROMPT], max_new_tokens=12, generated_alpha=1e-4)
    assert [g.text for g in batch] == [generated, generated]
    # a per-call set that states null means its own alpha, not the model's generated_alpha (shipped sets state it)
    stated = {"heads": [1, 2], "metadata": {"steer_generated": True, "generated_alpha": None}}
    assert model.score(PROMPT, answer, heads=stated) == pytest.approx(same_as_alpha.score(PROMPT, answer), abs=1e-6)
    assert model.score(PROMPT, answer, heads=[1, 2]) == pytest.approx(model.score(PROMPT, answer), abs=1e-6)
    # without steer_generated it changes nothing (the paper leaves generated keys alone)
    paper = PastaModel(model.model, model.tokenizer, heads=[1, 2])
    assert paper.score(PROMPT, answer, generated_alpha=1e-4) == paper.score(PROMPT, answer)
    for bad in (0, -1.0, "small", True):
        with pytest.raises(SteeringError, match="generated_alpha must be a number > 0"):
            paper.generate(PROMPT, max_new_tokens=2, generated_alpha=bad)
    with pytest.raises(SteeringError, match="generated_alpha"):
        PastaModel(model.model, model.tokenizer, heads=[1, 2], generated_alpha=0.0)
    with pytest.raises(HeadSetError, match="generated_alpha"):
        PastaModel(model.model, model.tokenizer, heads={"heads": [1], "metadata": {"generated_alpha": "tiny"}})


def test_shipped_sets_are_named_by_purpose(monkeypatch):
    shipped = {"context": HeadSet.from_pairs([(1, 0)]), "instructions": HeadSet.from_pairs([(0, 1)], {"alpha": 0.3})}
    monkeypatch.setattr("pasta_rag.engine.shipped_head_set", lambda name, purpose="context": shipped[purpose])
    model = PastaModel(tiny_model("llama"), char_tokenizer(), name="tiny")
    assert model.heads == shipped["context"]
    assert model.resolve_heads("instructions").pairs() == [(0, 1)]
    assert model.score(PROMPT, " green", heads="instructions") == pytest.approx(
        model.score(PROMPT, " green", heads={"0": [1]}, alpha=0.3), abs=1e-6)
    monkeypatch.setattr("pasta_rag.engine.shipped_head_set", lambda name, purpose="context": None)
    with pytest.raises(HeadSetError, match="ships no 'instructions' head set for 'tiny'"):
        model.generate(PROMPT, heads="instructions", max_new_tokens=2)
