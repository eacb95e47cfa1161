"""Every fast steering path against the dense reference, on tiny llama / qwen2 / gemma3 models."""

from __future__ import annotations

import math

import pytest
import torch
from reference import REFERENCE, ReferenceSetup, reference_setup
from tiny import ARCHITECTURES, VOCAB, tiny_model

from pasta_rag.errors import SteeringError
from pasta_rag.heads import HeadSet
from pasta_rag.steering import DENSE_BASELINE, SteeringState, steered_implementation, steering

ALPHA = 0.01
HEADS = {0: {1}, 1: {0, 3}, 2: {2}}
TOLERANCE = 1e-4


def head_set() -> HeadSet:
    return HeadSet.from_pairs([(layer, head) for layer, heads in HEADS.items() for head in heads])


def prompt_batch(seed: int = 1):
    """Two prompts, the second left-padded by 4; emphasis on a middle span (row 0) and two spans (row 1)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (2, 14), generator=generator)
    padding = torch.ones(2, 14, dtype=torch.long)
    padding[1, :4] = 0
    input_ids[1, :4] = 0
    emphasized = torch.zeros(2, 14, dtype=torch.bool)
    emphasized[0, 3:8] = True
    emphasized[1, 5:7] = True
    emphasized[1, 10:12] = True
    return input_ids, padding, emphasized


def reference_logits(model, input_ids, padding, emphasized, heads=HEADS, steer_generated=False, generated_alpha=None):
    implementation = model.config._attn_implementation
    model.set_attn_implementation(REFERENCE)
    setup = ReferenceSetup(padding, emphasized, heads, ALPHA, steer_generated, generated_alpha)
    try:
        with torch.no_grad(), reference_setup(setup):
            return model(input_ids=input_ids, attention_mask=padding).logits
    finally:
        model.set_attn_implementation(implementation)


def steered_logits(model, input_ids, padding, emphasized, heads=None, steer_generated=False, generated_alpha=None):
    state = SteeringState(emphasized, head_set() if heads is None else heads, ALPHA, model.config.num_attention_heads,
                          steer_generated, generated_alpha)
    with torch.no_grad(), steering(state):
        return model(input_ids=input_ids, attention_mask=padding).logits


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("implementation", ["pasta_sdpa", "pasta_eager", DENSE_BASELINE])
def test_prefill_matches_reference(architecture, implementation):
    model = tiny_model(architecture, implementation)
    input_ids, padding, emphasized = prompt_batch()
    expected = reference_logits(model, input_ids, padding, emphasized)
    actual = steered_logits(model, input_ids, padding, emphasized)
    real = padding.bool()
    assert (actual[real] - expected[real]).abs().max() < TOLERANCE
    unsteered = reference_logits(model, input_ids, padding, torch.zeros_like(emphasized))
    assert (unsteered[real] - expected[real]).abs().max() > 100 * TOLERANCE, "steering must change the logits"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_unpadded_prefill_keeps_is_causal_path_and_matches(architecture):
    model = tiny_model(architecture)
    input_ids, _, emphasized = prompt_batch()
    padding = torch.ones_like(input_ids)
    expected = reference_logits(model, input_ids[:1], padding[:1], emphasized[:1])
    actual = steered_logits(model, input_ids[:1], None, emphasized[:1])
    assert (actual - expected).abs().max() < TOLERANCE


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize(("steer_generated", "generated_alpha"), [(False, None), (True, None), (True, 1e-4)])
def test_cached_greedy_generation_matches_full_recompute(architecture, steer_generated, generated_alpha):
    """generate() with the KV cache steps past the sliding window and must pick the reference's tokens."""
    model = tiny_model(architecture)
    input_ids, padding, emphasized = prompt_batch()
    new_tokens = 8
    state = SteeringState(emphasized, head_set(), ALPHA, model.config.num_attention_heads, steer_generated,
                          generated_alpha)
    with torch.no_grad(), steering(state):
        generated = model.generate(
            input_ids=input_ids, attention_mask=padding, max_new_tokens=new_tokens, do_sample=False,
            pad_token_id=0, eos_token_id=None,
        )
    sequence, mask = input_ids, padding
    for _ in range(new_tokens):
        logits = reference_logits(model, sequence, mask, emphasized, steer_generated=steer_generated,
                                  generated_alpha=generated_alpha)
        next_token = logits[:, -1].argmax(dim=-1, keepdim=True)
        sequence = torch.cat([sequence, next_token], dim=1)
        mask = torch.cat([mask, torch.ones_like(next_token)], dim=1)
    assert torch.equal(generated, sequence)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_decode_step_logits_match_reference(architecture):
    """One cached decode step (the (batch, heads, 1, keys) mask path) against the full recompute."""
    model = tiny_model(architecture)
    input_ids, padding, emphasized = prompt_batch()
    state = SteeringState(emphasized, head_set(), ALPHA, model.config.num_attention_heads)
    prompt = input_ids[:, :-1]
    with torch.no_grad(), steering(state):
        first = model(input_ids=prompt, attention_mask=padding[:, :-1], use_cache=True)
        step = model(input_ids=input_ids[:, -1:], attention_mask=padding, cache=first.cache).logits[:, -1]
    expected = reference_logits(model, input_ids, padding, emphasized)[:, -1]
    assert (step - expected).abs().max() < TOLERANCE


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_empty_state_and_unsteered_rows_equal_plain_model(architecture):
    model = tiny_model(architecture)
    input_ids, padding, emphasized = prompt_batch()
    base = "eager" if architecture.endswith("softcap") else "sdpa"
    with torch.no_grad():
        steered_impl_unsteered = model(input_ids=input_ids, attention_mask=padding).logits
        model.set_attn_implementation(base)
        plain = model(input_ids=input_ids, attention_mask=padding).logits
        model.set_attn_implementation(f"pasta_{base}")
    assert torch.equal(steered_impl_unsteered, plain)
    # a row without emphasis is not steered, even when another row is
    emphasized[1] = False
    steered = steered_logits(model, input_ids, padding, emphasized)
    real = padding[1].bool()
    assert (steered[1][real] - plain[1][real]).abs().max() < TOLERANCE
    # an empty head set steers nothing
    no_heads = steered_logits(model, input_ids, padding, emphasized, heads=HeadSet.from_pairs([]))
    assert torch.equal(no_heads, plain)


def test_several_spans_are_one_union():
    """Two touching spans must steer exactly like the one span they make up (log(alpha) added once)."""
    model = tiny_model("llama")
    input_ids, _, _ = prompt_batch()
    one_span = torch.zeros(1, 14, dtype=torch.bool)
    one_span[0, 2:9] = True
    expected = reference_logits(model, input_ids[:1], torch.ones(1, 14), one_span)
    actual = steered_logits(model, input_ids[:1], None, one_span)
    assert (actual - expected).abs().max() < TOLERANCE


def test_generated_keys_are_not_steered():
    """Scoring a continuation: its keys sit after the prompt and get no bias."""
    model = tiny_model("llama")
    input_ids, _, emphasized = prompt_batch()
    prompt_len = 9
    emphasized = emphasized[:1, :prompt_len]
    actual = steered_logits(model, input_ids[:1], None, emphasized)
    expected = reference_logits(model, input_ids[:1], torch.ones(1, 14), emphasized)
    assert (actual - expected).abs().max() < TOLERANCE


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("generated_alpha", [None, 1e-4])
def test_generated_keys_are_steered_when_asked(architecture, generated_alpha):
    """steer_generated: a continuation's keys get log(alpha) (or log(generated_alpha)) too, in prefill and in a
    cached decode step."""
    model = tiny_model(architecture)
    input_ids, padding, emphasized = prompt_batch()
    prompt_len = 9
    emphasized = emphasized[:, :prompt_len]
    expected = reference_logits(model, input_ids, padding, emphasized, steer_generated=True,
                                generated_alpha=generated_alpha)
    actual = steered_logits(model, input_ids, padding, emphasized, steer_generated=True,
                            generated_alpha=generated_alpha)
    real = padding.bool()
    assert (actual[real] - expected[real]).abs().max() < TOLERANCE
    paper = steered_logits(model, input_ids, padding, emphasized)
    assert (paper[real] - actual[real]).abs().max() > 100 * TOLERANCE, "the generated keys' bias must matter"
    if generated_alpha is not None:
        same_as_prompt = steered_logits(model, input_ids, padding, emphasized, steer_generated=True)
        assert (same_as_prompt[real] - actual[real]).abs().max() > 100 * TOLERANCE, "generated_alpha must matter"
        assert torch.equal(steered_logits(model, input_ids, padding, emphasized, generated_alpha=generated_alpha),
                           paper), "without steer_generated, generated_alpha changes nothing"
    state = SteeringState(emphasized, head_set(), ALPHA, model.config.num_attention_heads, steer_generated=True,
                          generated_alpha=generated_alpha)
    with torch.no_grad(), steering(state):
        first = model(input_ids=input_ids[:, :-1], attention_mask=padding[:, :-1], use_cache=True)
        step = model(input_ids=input_ids[:, -1:], attention_mask=padding, cache=first.cache).logits[:, -1]
    assert (step - expected[:, -1]).abs().max() < TOLERANCE


def test_threads_keep_their_own_state():
    model = tiny_model("llama")
    input_ids, padding, emphasized = prompt_batch()
    other = torch.zeros_like(emphasized)
    other[:, 8:13] = True
    expected = {0: steered_logits(model, input_ids, padding, emphasized), 1: steered_logits(model, input_ids, padding, other)}
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}

    def work(which: int, marks: torch.Tensor) -> None:
        for _ in range(5):
            results[which].append(steered_logits(model, input_ids, padding, marks))

    import threading

    threads = [threading.Thread(target=work, args=(0, emphasized)), threading.Thread(target=work, args=(1, other))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for which in (0, 1):
        assert all(torch.equal(logits, expected[which]) for logits in results[which])


def test_bad_alpha_and_unsteerable_implementation():
    _, _, emphasized = prompt_batch()
    with pytest.raises(SteeringError, match="alpha must be > 0"):
        SteeringState(emphasized, head_set(), 0.0, 4)
    with pytest.raises(SteeringError, match="generated_alpha must be > 0"):
        SteeringState(emphasized, head_set(), ALPHA, 4, steer_generated=True, generated_alpha=0.0)
    with pytest.raises(SteeringError, match="cannot steer attn_implementation='flash_attention_2'"):
        steered_implementation("flash_attention_2")


def test_ready_made_4d_mask_is_refused():
    model = tiny_model("llama")
    input_ids, _, emphasized = prompt_batch()
    mask = torch.ones(2, 1, 14, 14).tril()[:, :, :, :].bool()
    state = SteeringState(emphasized, head_set(), ALPHA, 4)
    with torch.no_grad(), steering(state), pytest.raises(SteeringError, match="4D attention_mask"):
        model(input_ids=input_ids, attention_mask=mask)


# --- emphasis groups: each its own heads, alpha and tokens; the biases add ---------------------------------

SECOND_HEADS = {0: {0}, 1: {1}, 2: {0, 3}}  # disjoint from HEADS, as the engine makes them
SECOND_ALPHA = 0.2


def two_groups(model, emphasized, steer_generated=False):
    """The context group (HEADS, ALPHA, the prompt's emphasis) and a second group on other tokens and heads."""
    second = torch.zeros_like(emphasized)
    second[:, 9:11] = True  # row 0: after its span; row 1: between its spans
    states = [
        SteeringState(emphasized, head_set(), ALPHA, model.config.num_attention_heads, steer_generated, 1e-3),
        SteeringState(second, HeadSet.from_pairs([(layer, h) for layer, hs in SECOND_HEADS.items() for h in hs]),
                      SECOND_ALPHA, model.config.num_attention_heads),
    ]
    padding = prompt_batch()[1]
    setups = [ReferenceSetup(padding, emphasized, HEADS, ALPHA, steer_generated, 1e-3),
              ReferenceSetup(padding, second, SECOND_HEADS, SECOND_ALPHA)]
    return states, setups


def grouped_reference_logits(model, input_ids, padding, setups):
    implementation = model.config._attn_implementation
    model.set_attn_implementation(REFERENCE)
    try:
        with torch.no_grad(), reference_setup(setups):
            return model(input_ids=input_ids, attention_mask=padding).logits
    finally:
        model.set_attn_implementation(implementation)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("implementation", ["pasta_sdpa", "pasta_eager"])
def test_two_groups_match_the_reference(architecture, implementation):
    model = tiny_model(architecture, implementation)
    input_ids, padding, emphasized = prompt_batch()
    states, setups = two_groups(model, emphasized)
    with torch.no_grad(), steering(states):
        actual = model(input_ids=input_ids, attention_mask=padding).logits
    expected = grouped_reference_logits(model, input_ids, padding, setups)
    real = padding.bool()
    assert (actual[real] - expected[real]).abs().max() < TOLERANCE
    one_group = grouped_reference_logits(model, input_ids, padding, setups[:1])
    assert (one_group[real] - expected[real]).abs().max() > 100 * TOLERANCE, "the second group must count"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_two_groups_cached_generation_matches_full_recompute(architecture):
    model = tiny_model(architecture)
    input_ids, padding, emphasized = prompt_batch()
    states, setups = two_groups(model, emphasized, steer_generated=True)
    with torch.no_grad(), steering(states):
        generated = model.generate(input_ids=input_ids, attention_mask=padding, max_new_tokens=6, do_sample=False,
                                   pad_token_id=0, eos_token_id=None)
    sequence, mask = input_ids, padding
    for _ in range(6):
        with_mask = [ReferenceSetup(mask, s.emphasized, s.heads, s.alpha, s.steer_generated, s.generated_alpha)
                     for s in setups]
        next_token = grouped_reference_logits(model, sequence, mask, with_mask)[:, -1].argmax(dim=-1, keepdim=True)
        sequence = torch.cat([sequence, next_token], dim=1)
        mask = torch.cat([mask, torch.ones_like(next_token)], dim=1)
    assert torch.equal(generated, sequence)


def test_a_state_biases_repeated_rows_as_their_prompt_and_refuses_a_batch_that_does_not_divide():
    emphasized = torch.tensor([[False, True, False], [True, True, False]])
    state = SteeringState(emphasized, HeadSet.from_pairs([(0, 0)]), 0.1, 4, steer_generated=True, generated_alpha=0.01)
    state.record_kv_offset(5, 0)
    rows = state.key_bias(5, 2, torch.device("cpu"), torch.float32)  # 3 prompt keys, 2 generated
    beams = state.key_bias(5, 4, torch.device("cpu"), torch.float32)  # each prompt twice (beams, sequences)
    torch.testing.assert_close(beams, rows.repeat_interleave(2, dim=0))
    assert rows[0].tolist() == pytest.approx([math.log(0.1), 0, math.log(0.1), math.log(0.01), math.log(0.01)])
    with pytest.raises(SteeringError, match="does not match the 2 steered prompts"):
        state.key_bias(5, 3, torch.device("cpu"), torch.float32)
