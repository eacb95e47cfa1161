"""The head profiler: batched scores equal the plain loop's, selection logic, resuming, the command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from reference import score_heads_plainly
from tiny import ARCHITECTURES, char_tokenizer, tiny_model
from typer.testing import CliRunner

from pasta_rag import HeadSet, PastaError, PastaModel
from pasta_rag.cli import app
from pasta_rag.research.evaluation import parse_example
from pasta_rag.research.profiling import (
    Candidate,
    Checkpoint,
    _Batch,
    choose_heads,
    intersect_top_k,
    profile_tasks,
    profiled_head_set,
    score_heads,
    scoring_row,
    stop_row,
    top_k,
)

CONFLICTS = [
    {"id": "c1", "task": "knowledge_conflict", "context": "The tower is in Rome.", "question": "Where is it?",
     "target_new": "Rome", "target_true": "Paris", "answer": "It is in Rome."},
    {"id": "c2", "task": "knowledge_conflict", "context": "Bob now lives in Oslo, by the sea.",
     "question": "Where does Bob live?", "target_new": "Oslo", "target_true": "Lima"},
    {"id": "c3", "task": "knowledge_conflict", "context": "Its capital is Bern.", "question": "Capital?",
     "target_new": "Bern", "target_true": "Zurich"},
]
INSTRUCTIONS = [
    {"id": "j1", "task": "instruction", "instruction": "Answer in JSON.", "context": "Rome is in Italy.",
     "question": "Which city?", "check": {"kind": "json_keys", "keys": ["city"]},
     "answer": '{"city": "Rome"}', "violation": "Rome"},
    {"id": "j2", "task": "instruction", "instruction": "Say 'they', never 'she'.", "context": "She is a cook.",
     "question": "What does she do?", "check": {"kind": "absent_words", "words": ["she"]},
     "answer": "They cook.", "violation": "She cooks."},
]


def examples(records):
    return [parse_example(record) for record in records]


def tiny_engine(architecture: str = "llama") -> PastaModel:
    return PastaModel(tiny_model(architecture), char_tokenizer(), alpha=0.01, name=f"tiny-{architecture}")


def assert_same_ranking(scores: torch.Tensor, reference: torch.Tensor, tolerance: float = 1e-4) -> None:
    """Every two heads the reference tells apart by more than ``tolerance`` come in the same order."""
    a, b = scores.flatten(), reference.flatten()
    apart = (b[:, None] - b[None, :]) > tolerance  # (heads, heads): i clearly above j in the reference
    assert bool(((a[:, None] > a[None, :]) | ~apart).all())


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_batched_scores_equal_the_plain_loop(architecture):
    model = tiny_engine(architecture)
    rows = [scoring_row(model, e) for e in examples(CONFLICTS + INSTRUCTIONS)]
    rows.append(stop_row(model, examples(CONFLICTS)[0]))  # a log-odds row batched with margin rows
    plain = score_heads_plainly(model, rows, 0.01)
    for batch_tokens in (1, 400, 100_000):  # one row per chunk, a few, all at once
        batched = score_heads(model, rows, 0.01, batch_tokens=batch_tokens)
        torch.testing.assert_close(batched, plain, atol=1e-4, rtol=0)
        assert_same_ranking(batched, plain)
    assert plain.abs().max() > 1e-3  # steering one head moves the margin: the equality is not vacuous


def test_the_shared_prefix_is_used_and_changes_nothing():
    model = tiny_engine("llama")  # no sliding window: the unsteered prefix is reused
    rows = [scoring_row(model, e) for e in examples(CONFLICTS)]
    assert min(row.first_affected for row in rows) > 5  # "<s>user: Context: " comes before the emphasis
    torch.testing.assert_close(score_heads(model, rows, 0.01), score_heads_plainly(model, rows, 0.01),
                               atol=1e-4, rtol=0)


def test_only_the_asked_layers_are_scored():
    model = tiny_engine("qwen2")
    rows = [scoring_row(model, e) for e in examples(CONFLICTS)]
    scores = score_heads(model, rows, 0.01, layers=[1])
    assert math.isnan(scores[0, 0]) and math.isnan(scores[2, 3]) and not scores[1].isnan().any()


def test_scoring_rows_contrast_the_two_answers_after_their_shared_start():
    model = tiny_engine("llama")
    row = scoring_row(model, examples(INSTRUCTIONS)[1])  # "They cook." vs "She cooks.": no shared token
    assert (row.obeying, row.ignoring) == tuple(model.tokenizer.convert_tokens_to_ids(["T", "S"]))
    shared = scoring_row(model, parse_example({**CONFLICTS[0], "target_new": "Rome", "target_true": "Roma"}))
    assert shared.input_ids[-3:] == model.tokenizer.convert_tokens_to_ids(["R", "o", "m"])
    assert shared.unbiased[-3:] == [True] * 3  # answer keys are never steered


def test_stop_rows_score_ending_the_turn_after_the_whole_answer():
    model = tiny_engine("llama")
    example = examples(CONFLICTS)[0]
    row = stop_row(model, example)
    answer = model.tokenizer("It is in Rome.", add_special_tokens=False)["input_ids"]
    assert row.input_ids[-len(answer):] == answer and row.unbiased[-len(answer):] == [True] * len(answer)
    assert row.obeying == model.tokenizer.convert_tokens_to_ids("\n")  # what the tiny template writes after a turn
    assert row.ignoring is None
    plain = PastaModel(model.model, char_tokenizer(chat_template=None), name="tiny-plain")
    assert stop_row(plain, example).obeying == plain.tokenizer.convert_tokens_to_ids("\n")  # "\n\nUser:"
    with pytest.raises(PastaError, match="no 'answer'"):
        stop_row(model, examples(CONFLICTS)[1])


def test_a_row_without_an_ignoring_token_scores_log_odds():
    model = tiny_engine("llama")
    rows = [stop_row(model, examples(CONFLICTS)[0]), scoring_row(model, examples(CONFLICTS)[1])]
    batch = _Batch.of(rows, model.pad_token_id)
    logits = torch.randn(2, model.model.config.vocab_size)
    log_probs = logits.log_softmax(-1)
    p = log_probs[0, rows[0].obeying].exp()
    expected = [torch.log(p / (1 - p)), log_probs[1, rows[1].obeying] - log_probs[1, rows[1].ignoring]]
    torch.testing.assert_close(batch.margin(logits), torch.stack(expected))


def test_scoring_rows_explain_unusable_examples():
    model = tiny_engine("llama")
    with pytest.raises(PastaError, match="prefix of the other"):
        scoring_row(model, parse_example({**CONFLICTS[0], "target_new": "Rom", "target_true": "Rome"}))
    with pytest.raises(PastaError, match="'answer' and 'violation'"):
        scoring_row(model, parse_example({k: v for k, v in INSTRUCTIONS[0].items() if k != "answer"}))


def test_top_k_breaks_ties_toward_lower_layers_and_skips_unscored():
    scores = torch.tensor([[0.5, 0.9, math.nan], [0.9, 0.1, 0.5]])
    assert top_k(scores, 3) == [(0, 1), (1, 0), (0, 0)]


def test_selection_is_the_intersection_of_per_task_top_k():
    a = torch.tensor([[4.0, 3.0], [2.0, 1.0]])  # ranking (0,0) (0,1) (1,0) (1,1)
    b = torch.tensor([[1.0, 3.0], [4.0, 2.0]])  # ranking (1,0) (0,1) (1,1) (0,0)
    assert intersect_top_k({"a": a, "b": b}, 1) == []
    assert intersect_top_k({"a": a, "b": b}, 2) == [(0, 1)]
    assert intersect_top_k({"a": a, "b": b}, 3) == [(0, 1), (1, 0)]
    with pytest.raises(PastaError):
        intersect_top_k({}, 3)


def test_candidates_rank_by_accuracy_minus_looping_then_fewer_heads():
    loud = Candidate(10, 0.01, [(1, 1)] * 5, {"a": {"acc": 0.9, "rep": 0.3}})
    clean = Candidate(20, 0.01, [(1, 1)] * 9, {"a": {"acc": 0.7, "rep": 0.0}})
    assert clean.objective > loud.objective


def test_a_killed_profile_resumes_where_it_stopped(tmp_path):
    model = tiny_engine("llama")
    tasks = {"conflicts": examples(CONFLICTS), "instructions": examples(INSTRUCTIONS)}
    path = tmp_path / "progress.json"

    class Killed(Exception):
        pass

    done = []

    def die_after_four(units):
        done.append(units)
        if len(done) == 4:
            raise Killed

    with pytest.raises(Killed):
        profile_tasks(model, tasks, 0.01, Checkpoint.open(path, model.name, 0.01), die_after_four)
    saved = json.loads(path.read_text())["tasks"]
    assert len(saved["conflicts"]["layers"]) == 3 and len(saved["instructions"]["layers"]) == 1

    scored_layers = []
    from pasta_rag.research.profiling import run  # profile_tasks reads score_heads from its own module

    original = run.score_heads

    def counting(*args, layers, **kwargs):
        scored_layers.append(list(layers))
        return original(*args, layers=layers, **kwargs)

    run.score_heads = counting
    try:
        resumed = profile_tasks(model, tasks, 0.01, Checkpoint.open(path, model.name, 0.01))
    finally:
        run.score_heads = original
    assert scored_layers == [[1, 2]]  # the conflicts task and layer 0 of the other were not redone
    fresh = profile_tasks(model, tasks, 0.01, Checkpoint.open(None, model.name, 0.01))
    for name in tasks:
        torch.testing.assert_close(resumed[name], fresh[name], atol=1e-5, rtol=0)
    # another alpha or other data does not reuse the file
    assert Checkpoint.open(path, model.name, 0.1).data["tasks"] == {}
    other = {"conflicts": examples(CONFLICTS[:2])}
    assert Checkpoint.open(path, model.name, 0.01).layers_done("conflicts", "different") == {}
    assert profile_tasks(model, other, 0.01, Checkpoint.open(None, model.name, 0.01))["conflicts"].shape == (3, 4)


def test_choosing_on_dev_writes_a_head_set_the_model_accepts(tmp_path):
    model = tiny_engine("llama")
    tasks = {"conflicts": examples(CONFLICTS), "instructions": examples(INSTRUCTIONS)}
    checkpoint = Checkpoint.open(tmp_path / "p.json", model.name, 0.01)
    scores = profile_tasks(model, tasks, 0.01, checkpoint)
    ranked = choose_heads(model, scores, {"dev": examples(CONFLICTS[:2])}, [3, 6, 12], [0.01, 0.1], checkpoint)
    assert ranked == sorted(ranked, key=lambda c: (-c.objective, len(c.heads), c.alpha))
    assert len({tuple(c.heads) for c in ranked}) * 2 == len(ranked)  # each distinct set once per alpha
    head_set = profiled_head_set(model.name, scores, {n: len(e) for n, e in tasks.items()}, 0.01, ranked)
    head_set.save(tmp_path / "heads.json")
    loaded = HeadSet.load(tmp_path / "heads.json")
    assert loaded.pairs() == ranked[0].heads
    assert loaded.metadata["alpha"] == ranked[0].alpha and loaded.metadata["tasks"]["conflicts"]["n"] == 3
    steered = PastaModel(model.model, model.tokenizer, heads=tmp_path / "heads.json", name="tiny")
    assert steered.alpha == ranked[0].alpha
    # a second choice reads the dev results from the checkpoint instead of generating again
    again = choose_heads(model, scores, {"dev": examples(CONFLICTS[:2])}, [3, 6, 12], [0.01, 0.1], checkpoint)
    assert [c.dev for c in again] == [c.dev for c in ranked]
    evaluated = len(checkpoint.data["dev_answers"])
    choose_heads(model, scores, {"dev": examples(CONFLICTS[1:])}, [3], [0.01], checkpoint)
    assert len(checkpoint.data["dev_answers"]) == evaluated + 1  # other dev data: evaluated afresh, not read back
    # candidates generating with generated keys steered are other results, and the head set says so
    generated = choose_heads(model, scores, {"dev": examples(CONFLICTS[1:])}, [3], [0.01], checkpoint,
                             steer_generated=True)
    assert len(checkpoint.data["dev_answers"]) == evaluated + 2
    profiled_head_set(model.name, scores, {n: len(e) for n, e in tasks.items()}, 0.01, generated,
                      steer_generated=True).save(tmp_path / "generated.json")
    assert PastaModel(model.model, model.tokenizer, heads=tmp_path / "generated.json").steer_generated
    assert steered.steer_generated is False
    # generated exponents: one candidate per exponent, keyed apart; the best one's generated_alpha is shipped
    exponents = choose_heads(model, scores, {"dev": examples(CONFLICTS[1:])}, [3], [0.1], checkpoint,
                             steer_generated=True, generated_exponents=[1.0, 2.0])
    assert sorted(c.generated_exponent for c in exponents) == [1.0, 2.0]
    assert {c.generated_exponent: c.generated_alpha for c in exponents} == {1.0: None, 2.0: pytest.approx(0.01)}
    assert len(checkpoint.data["dev_answers"]) == evaluated + 4  # exponent 1 at alpha 0.1 is new too
    best_second = sorted(exponents, key=lambda c: c.generated_exponent == 1)  # as if exponent 2 had won
    profiled_head_set(model.name, scores, {n: len(e) for n, e in tasks.items()}, 0.1, best_second,
                      steer_generated=True).save(tmp_path / "exponent.json")
    chosen = PastaModel(model.model, model.tokenizer, heads=tmp_path / "exponent.json")
    assert chosen.generated_alpha == pytest.approx(0.01) and chosen.alpha == 0.1
    with pytest.raises(PastaError, match="only steer_generated steers"):
        choose_heads(model, scores, {"dev": examples(CONFLICTS[1:])}, [3], [0.1], checkpoint,
                     generated_exponents=[2.0])
    with pytest.raises(PastaError, match="must be > 0"):
        choose_heads(model, scores, {"dev": examples(CONFLICTS[1:])}, [3], [0.1], checkpoint,
                     steer_generated=True, generated_exponents=[0.0])


def test_profile_command_on_a_tiny_model(tmp_path):
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    files = {}
    for name, records in (("conflicts", CONFLICTS), ("json", INSTRUCTIONS)):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("\n".join(json.dumps(r) for r in records) + "\n{not json\n")
    out = tmp_path / "heads.json"
    result = CliRunner().invoke(app, [
        "profile", "--model", str(folder), "--train", str(files["conflicts"]), "--train", str(files["json"]),
        "--dev", str(files["conflicts"]), "--out", str(out), "--ks", "4,8", "--alphas", "0.1",
    ])
    assert result.exit_code == 0, result.output
    assert "skipped line 4" in result.output
    saved = json.loads(out.read_text())
    assert set(saved["metadata"]["head_scores"]) == {"conflicts", "json"}
    assert saved["metadata"]["alpha"] == 0.1 and saved["heads"]
    assert (tmp_path / "heads.partial.json").exists()
    assert saved["metadata"]["steer_generated"] is False
    assert saved["metadata"]["generated_alpha"] is None  # stated, so the set never inherits a model's
    generated = CliRunner().invoke(app, [
        "profile", "--model", str(folder), "--train", str(files["conflicts"]), "--train", str(files["json"]),
        "--dev", str(files["conflicts"]), "--out", str(out), "--ks", "4,8", "--alphas", "0.1", "--steer-generated",
    ])
    assert generated.exit_code == 0, generated.output
    assert json.loads(out.read_text())["metadata"]["steer_generated"] is True
    exponents = CliRunner().invoke(app, [
        "profile", "--model", str(folder), "--train", str(files["conflicts"]), "--train", str(files["json"]),
        "--dev", str(files["conflicts"]), "--out", str(out), "--ks", "4", "--alphas", "0.1", "--steer-generated",
        "--generated-exponents", "1,2",
    ])
    assert exponents.exit_code == 0, exponents.output
    metadata = json.loads(out.read_text())["metadata"]
    assert len(metadata["candidates"]) == 2
    assert metadata.get("generated_alpha") in (None, pytest.approx(0.01))
    refused = CliRunner().invoke(app, [
        "profile", "--model", str(folder), "--train", str(files["conflicts"]), "--train", str(files["json"]),
        "--dev", str(files["conflicts"]), "--out", str(out), "--ks", "4", "--alphas", "0.1",
        "--generated-exponents", "2",
    ])
    assert refused.exit_code == 2 and "--steer-generated" in refused.output
    assert "raced by successive halving" in metadata["method"]  # the default dev choice, and the set says so
    for choice, raced in (("full", False), ("fast", None)):
        run = CliRunner().invoke(app, [
            "profile", "--model", str(folder), "--train", str(files["conflicts"]), "--dev", str(files["conflicts"]),
            "--out", str(out), "--ks", "4", "--alphas", "0.1", "--dev-choice", choice,
        ])
        if raced is None:
            assert run.exit_code == 2 and "is one of race, full" in run.output
        else:
            assert run.exit_code == 0, run.output
            assert ("raced" in json.loads(out.read_text())["metadata"]["method"]) is raced
