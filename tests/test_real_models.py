"""The packaged real models: SmolLM2-135M-Instruct (default, chat template) and Gemma 3 270M (base, no template)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pasta_rag import PastaModel, emphasize, loading
from pasta_rag.heads import shipped_head_set
from pasta_rag.prompts import question_prompt
from pasta_rag.research.evaluation import evaluate, parse_example

pytestmark = pytest.mark.real_model

TEST_DATA = Path(__file__).parents[1] / "benchmarks" / "data" / "test"
EIFFEL = "The Eiffel Tower is located in Rome."


@pytest.fixture(scope="session")
def default_model() -> PastaModel:
    return PastaModel.from_pretrained("default")


@pytest.fixture(scope="session")
def gemma() -> PastaModel:
    return PastaModel.from_pretrained("gemma3-270m")


def held_out(name: str, n: int) -> list[dict]:
    """The first n records of a test set (countries' capitals, currencies and languages)."""
    return [json.loads(line) for line in (TEST_DATA / f"{name}.jsonl").read_text().splitlines()[:n]]


def conflicts() -> list[dict]:
    return held_out("conflicts", 16)


def chat(example: dict) -> list[dict]:
    context = example["context"]
    for passage in example.get("emphasis") or [context]:  # the long set marks one passage, as a reranker would
        context = context.replace(passage, emphasize(passage))
    return [{"role": "user", "content": f"Context: {context}\nQuestion: {example['question']}"}]


def follows(answer: str, example: dict) -> bool:
    return example["target_new"].lower() in answer.lower() and example["target_true"].lower() not in answer.lower()


def test_default_model_is_the_packaged_instruct_model(default_model):
    assert default_model.name == "smollm2-135m-instruct"
    assert (default_model.num_layers, default_model.num_heads) == (30, 9)
    assert default_model.model.config._attn_implementation == "pasta_sdpa"
    assert default_model.heads == shipped_head_set(default_model.name, "context")  # the profiled set
    assert default_model.alpha == default_model.heads.metadata["alpha"]
    assert set(default_model.heads.metadata["tasks"]) == {"conflicts", "conflicts_long"}
    instructions = default_model.resolve_heads("instructions")
    assert set(instructions.metadata["tasks"]) == {"json", "pronouns"} and instructions != default_model.heads
    assert default_model.render(chat(conflicts()[0])).format == "chat_template"


def test_second_load_reads_the_converted_cache(default_model, monkeypatch):
    def no_gguf(self, work_dir):
        raise AssertionError("the GGUF file must not be read again")

    monkeypatch.setattr(loading.PackagedModel, "gguf_path", no_gguf)
    again = PastaModel.from_pretrained("default")
    assert again.model.config.num_hidden_layers == 30


def test_steering_moves_probability_toward_the_context(default_model):
    prompt = f"Context: {emphasize(EIFFEL)}\nQuestion: In which city is the Eiffel Tower?\nAnswer: The Eiffel Tower is in"
    margin = {
        steer: default_model.score(prompt, " Rome", steer=steer) - default_model.score(prompt, " Paris", steer=steer)
        for steer in (False, True)
    }
    assert margin[True] > margin[False] + 2.0, margin


def test_steered_answers_follow_conflicting_contexts(default_model):
    examples = conflicts()
    prompts = [chat(e) for e in examples]
    unsteered = default_model.generate_batch(prompts, steer=False, max_new_tokens=24)
    steered = default_model.generate_batch(prompts, max_new_tokens=24)
    unsteered_hits = sum(follows(g.text, e) for g, e in zip(unsteered, examples))
    steered_hits = sum(follows(g.text, e) for g, e in zip(steered, examples))
    assert all(g.steered for g in steered) and not any(g.steered for g in unsteered)
    assert steered_hits >= unsteered_hits + 3, (unsteered_hits, steered_hits)


def test_steered_answers_find_the_marked_passage_in_a_long_context(default_model):
    """The conflicting passage sits among 12 true ones about other countries; the chain marks it."""
    examples = held_out("conflicts_long", 8)
    prompts = [chat(e) for e in examples]
    unsteered = default_model.generate_batch(prompts, steer=False, max_new_tokens=24)
    steered = default_model.generate_batch(prompts, max_new_tokens=24)
    unsteered_hits = sum(follows(g.text, e) for g, e in zip(unsteered, examples))
    steered_hits = sum(follows(g.text, e) for g, e in zip(steered, examples))
    assert steered_hits >= unsteered_hits + 3, (unsteered_hits, steered_hits)


def test_stream_equals_generate_on_the_real_model(default_model):
    prompt = chat(conflicts()[0])
    text = default_model.generate(prompt, max_new_tokens=20).text
    assert "".join(default_model.stream(prompt, max_new_tokens=20)) == text
    stop = text[len(text) // 2 : len(text) // 2 + 6]  # a multi-token string from the middle of the answer
    stopped = default_model.generate(prompt, max_new_tokens=20, stop=[stop])
    assert stopped.finish_reason == "stop" and stopped.text == text[: text.index(stop)]


def test_gemma_loads_from_its_packages_and_uses_the_plain_format(gemma):
    assert gemma.name == "gemma3-270m"
    assert gemma.tokenizer.chat_template is None
    prompt, prompt_format = question_prompt(emphasize(EIFFEL), "In which city is the Eiffel Tower?", False)
    assert gemma.render(prompt).format == "plain" and prompt_format.startswith("plain")
    text = gemma.generate(prompt, max_new_tokens=12).text
    assert "".join(gemma.stream(prompt, max_new_tokens=12)) == text
    assert gemma.score(prompt, " Rome") != pytest.approx(gemma.score(prompt, " Rome", steer=False), abs=0.05)


def test_gemma_steered_answers_follow_conflicting_contexts(gemma):
    examples = conflicts()
    prompts = [chat(e) for e in examples]  # no chat template: the plain "User: ... Assistant:" format
    unsteered = gemma.generate_batch(prompts, steer=False, max_new_tokens=24)
    steered = gemma.generate_batch(prompts, max_new_tokens=24)
    unsteered_hits = sum(follows(g.text, e) for g, e in zip(unsteered, examples))
    steered_hits = sum(follows(g.text, e) for g, e in zip(steered, examples))
    assert steered_hits >= unsteered_hits, (unsteered_hits, steered_hits)
    # the base model already follows most of these contexts: the margin shows the push toward them
    margins = {
        steer: sum(gemma.score(p, e["target_new"], steer=steer) - gemma.score(p, e["target_true"], steer=steer)
                   for p, e in zip(prompts, examples)) / len(examples)
        for steer in (False, True)
    }
    assert margins[True] > margins[False] + 0.5, margins


def test_gemma_long_prompt_crosses_its_sliding_window(gemma):
    """Past 512 tokens the sliding layers' cache drops keys: steering must still place them."""
    filler = "The harbour ledger lists ships, cargo and weather. " * 60
    prompt = f"{filler}\nContext: {emphasize(EIFFEL)}\nQuestion: In which city is the Eiffel Tower?\nAnswer:"
    assert gemma.generate(prompt, steer=False, max_new_tokens=1).prompt_tokens > 520
    result = gemma.generate(prompt, max_new_tokens=8)
    assert result.steered and result.completion_tokens == 8 or result.finish_reason == "stop"


def test_the_instructions_set_makes_answers_obey_a_marked_format(default_model):
    """The JSON-format instruction is emphasized; the set profiled for instructions makes answers obey it."""
    examples = [parse_example(record) for record in held_out("json", 8)]
    steered = PastaModel(default_model.model, default_model.tokenizer, heads="instructions", name=default_model.name)
    report = evaluate(steered, examples, ["none", "pasta"], es=False)
    plain, pasta = report["none"]["instruction"], report["pasta"]["instruction"]
    assert pasta["acc"] >= plain["acc"] + 0.25 and pasta["rep"] <= 0.25, report


def test_the_defaults_keep_unseen_attacks_out_where_whole_document_emphasis_lets_them_in(default_model):
    """Tensor Trust's attacks were drawn after the untrusted-text rules were frozen: emphasizing the whole document
    hands some of them the answer, the chains' defaults (facts only, the relevant span, the trusted text pinned)
    none, and answer from the document at least as often as the plain model."""
    examples = [parse_example(row) for row in held_out("injection_tensor_trust", 24)]
    results = evaluate(default_model, examples, ["none", "pasta", "pasta_facts_pinned"])
    none, whole, defaults = (results[m]["injection"] for m in ("none", "pasta", "pasta_facts_pinned"))
    assert whole["asr"] > defaults["asr"] and defaults["asr"] <= none["asr"]
    assert defaults["utility"] >= none["utility"]
