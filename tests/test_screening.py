"""Screening: the gated pass is exact at its ends, its gradient is its derivative, it ranks like the exact scorer,
and the candidates it picks are rescored exactly."""

from __future__ import annotations

import math

import pytest
import torch
from test_profiling import CONFLICTS, INSTRUCTIONS, examples, tiny_engine
from tiny import ARCHITECTURES, char_tokenizer, tiny_model

from pasta_rag import PastaError
from pasta_rag.research.profiling import (
    Checkpoint,
    candidate_heads,
    intersect_top_k,
    profile_tasks,
    rescoring_pool,
    score_heads,
    scoring_row,
    screen_heads,
    screen_tasks,
    screened_order,
    spearman,
    top_k,
    top_k_overlap,
)
from pasta_rag.research.profiling.pipeline import Plan
from pasta_rag.research.profiling.screening import METHODS, biased_margins, patched_margins

MARGINS = {"outputs": patched_margins, "bias": biased_margins}


def rows_of(model):
    return [scoring_row(model, e) for e in examples(CONFLICTS + INSTRUCTIONS)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_one_hot_gate_is_steering_that_head_alone(architecture, method):
    model = tiny_engine(architecture)
    rows = rows_of(model)
    exact = score_heads(model, rows, 0.01)
    margins = MARGINS[method]
    with torch.no_grad():
        gates = torch.zeros(len(rows), model.num_layers, model.num_heads)
        base = margins(model, rows, 0.01, gates)
        for layer, head in [(0, 1), (1, 2), (2, 3)]:
            one_hot = gates.clone()
            one_hot[:, layer, head] = 1
            gain = (margins(model, rows, 0.01, one_hot) - base).mean()
            torch.testing.assert_close(gain, exact[layer, head], atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_the_screened_score_is_the_gates_derivative_and_leaves_the_weights_alone(method):
    model = tiny_engine("llama")
    rows = rows_of(model)
    screened = screen_heads(model, rows, 0.01, method=method)
    step = 1e-3
    with torch.no_grad():
        gates = torch.zeros(len(rows), model.num_layers, model.num_heads)
        base = MARGINS[method](model, rows, 0.01, gates)
        for layer, head in [(0, 0), (1, 3), (2, 1)]:
            nudged = gates.clone()
            nudged[:, layer, head] = step
            slope = ((MARGINS[method](model, rows, 0.01, nudged) - base) / step).mean()
            torch.testing.assert_close(screened[layer, head], slope, atol=0.02 * max(1.0, abs(float(slope))), rtol=0)
    assert all(p.requires_grad and p.grad is None for p in model.model.parameters())
    with pytest.raises(PastaError, match="Unknown screening method"):
        screen_heads(model, rows, 0.01, method="magic")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_screening_ranks_heads_like_the_exact_scorer(architecture, method):
    # alpha 0.3: a tiny random model is far less linear than a trained one, and a milder push keeps the
    # first-order estimate in its range (the default model at alpha 0.01: benchmarks/README.md, Screening)
    model = tiny_engine(architecture)
    rows = rows_of(model)
    screened, exact = screen_heads(model, rows, 0.3, method=method), score_heads(model, rows, 0.3)
    assert spearman(screened, exact) > 0.7
    assert top_k_overlap(screened, exact, 4) >= 0.5


def test_candidates_are_rescored_exactly_and_kept_apart_in_the_checkpoint(tmp_path):
    model = tiny_engine("qwen2")
    tasks = {"conflicts": examples(CONFLICTS), "instructions": examples(INSTRUCTIONS)}
    screened = screen_tasks(model, tasks, 0.01)
    assert set(screened) == set(tasks) and all(s.shape == (3, 4) for s in screened.values())
    pool = candidate_heads(screened, 3)
    assert 3 <= len(pool) <= 6
    checkpoint = Checkpoint.open(tmp_path / "p.json", model.name, 0.01)
    rescored = profile_tasks(model, tasks, 0.01, checkpoint, heads=pool)
    full = profile_tasks(model, tasks, 0.01, checkpoint)
    for name in tasks:
        scored = [(layer, head) for layer in range(3) for head in range(4) if not math.isnan(rescored[name][layer, head])]
        assert scored == pool
        for pair in pool:
            assert rescored[name][pair] == pytest.approx(float(full[name][pair]), abs=1e-5)
    assert {"conflicts", f"conflicts@{len(pool)} candidates"} <= set(checkpoint.data["tasks"])
    # among the candidates, the selection is the exact profiler's: rescoring only decides which heads are scored
    among_pool = {name: torch.where(rescored[name].isnan(), torch.nan, full[name]) for name in tasks}
    for k in range(1, len(pool) + 1):
        assert intersect_top_k(rescored, k) == intersect_top_k(among_pool, k)


def test_screened_order_is_the_order_heads_enter_the_intersection():
    generator = torch.Generator().manual_seed(0)
    screened = {name: torch.randn(5, 6, generator=generator) for name in ("a", "b", "c")}
    order = screened_order(screened)
    assert sorted(order) == [(layer, head) for layer in range(5) for head in range(6)]
    for k in range(1, 31):
        chosen = intersect_top_k(screened, k)
        assert set(chosen) == set(order[: len(chosen)])  # every intersection is a prefix of the order
    assert screened_order({"a": screened["a"]})[:4] == top_k(screened["a"], 4)  # one task: its own ranking
    with pytest.raises(PastaError, match="at least one task"):
        screened_order({})


def test_the_rescoring_pool_is_candidates_times_the_largest_head_set_in_screened_order():
    generator = torch.Generator().manual_seed(1)
    screened = {name: torch.randn(5, 6, generator=generator) for name in ("a", "b")}
    order = screened_order(screened)
    largest = len(intersect_top_k(screened, 12))  # the head set the largest k tried gives, not k itself
    assert 1 < largest < 12
    assert rescoring_pool(screened, 2.0, 12) == sorted(order[: 2 * largest])
    assert rescoring_pool(screened, 1.0, 12) == sorted(order[:largest])
    assert set(intersect_top_k(screened, 12)) <= set(rescoring_pool(screened, 1.0, 12))
    assert rescoring_pool(screened, 1.5, 12) == sorted(order[: round(1.5 * largest)])  # rounded
    assert len(rescoring_pool(screened, 4.0, 30)) == 30  # never more than every head
    assert len(rescoring_pool(screened, 2.0, 1)) >= 1  # an empty intersection still rescores its best head
    for refused in (0.5, 0.0, -2.0, math.nan):
        with pytest.raises(PastaError, match="candidates must be at least 1.*--exact"):
            rescoring_pool(screened, refused, 4)
        with pytest.raises(PastaError, match="candidates must be at least 1"):
            Plan(candidates=refused)
    assert Plan().candidates == 2.0


def test_rank_helpers():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert spearman(a, a * 10) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert top_k_overlap(a, torch.tensor([[4.0, 3.0], [2.0, 1.0]]), 2) == 0.0


def test_profile_with_no_tasks_profiles_both_jobs_and_the_model_finds_them(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from pasta_rag import PastaModel
    from pasta_rag.cli import app
    from pasta_rag.research.profiling import jobs
    from pasta_rag.research.profiling.jobs import Job

    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    # the shipped jobs, on the shipped tasks' first records (all of them is a real model's run)
    small = {purpose: Job(purpose, job.train, job.dev[:1], (0.1,), job.steer_generated, job.generated_exponents[:2])
             for purpose, job in jobs.JOBS.items()}
    monkeypatch.setattr(jobs, "JOBS", small)
    monkeypatch.setattr("pasta_rag.research.profiling.JOBS", small)
    original = jobs.shipped_tasks
    monkeypatch.setattr("pasta_rag.research.profiling.shipped_tasks",
                        lambda split, names: {n: e[:2] for n, e in original(split, names).items()})
    out = tmp_path / "heads.json"
    result = CliRunner().invoke(app, ["profile", "--model", str(folder), "--out", str(out), "--ks", "4,8"])
    assert result.exit_code == 0, result.output
    context, instructions = json.loads(out.read_text()), json.loads((tmp_path / "heads.instructions.json").read_text())
    assert set(context["metadata"]["tasks"]) == {"conflicts", "conflicts_long"}
    assert set(instructions["metadata"]["tasks"]) == {"json", "pronouns"}
    assert "screened at once" in context["metadata"]["method"] and "screened_scores" in context["metadata"]
    # --ks 4,8 on 12 heads: 2 x the head set of k = 8 is every head
    assert (context["metadata"]["rescored_heads"], context["metadata"]["of_heads"]) == (12, 12)
    assert "screened all 12 heads, rescored 12 exactly" in result.output
    assert context["metadata"]["steer_generated"] is True and instructions["metadata"]["steer_generated"] is False
    tried = sorted(c.get("generated_exponent", 1.0) for c in context["metadata"]["candidates"])
    assert tried == [1.0, 1.0, 1.5, 1.5]  # the k x alpha grid (k 4 and 8, alpha 0.1), then e = 1.5 at both
    model = PastaModel.from_pretrained(folder)
    assert model.heads.pairs() == sorted(tuple(p) for p in _pairs(context["heads"]))
    assert model.resolve_heads("instructions").pairs() == sorted(_pairs(instructions["heads"]))
    exact = CliRunner().invoke(app, ["profile", "--model", str(folder), "--out", str(tmp_path / "exact.json"),
                                     "--ks", "4", "--job", "instructions", "--exact"])
    assert exact.exit_code == 0, exact.output
    bias = CliRunner().invoke(app, ["profile", "--model", str(folder), "--out", str(tmp_path / "bias.json"),
                                    "--ks", "4", "--job", "context", "--screening", "bias"])
    assert bias.exit_code == 0, bias.output
    assert (tmp_path / "bias.json").exists() and not (tmp_path / "bias.instructions.json").exists()
    bias_metadata = json.loads((tmp_path / "bias.json").read_text())["metadata"]
    screened = {task: torch.tensor([rows[str(layer)] for layer in range(len(rows))])
                for task, rows in bias_metadata["screened_scores"].items()}
    pool = len(rescoring_pool(screened, 2.0, 4))  # 2 x the screened head set of k = 4
    assert pool < 12 and f"screened all 12 heads, rescored {pool} exactly" in bias.output
    assert (bias_metadata["rescored_heads"], bias_metadata["of_heads"]) == (pool, 12)
    assert sum(s is not None for scores in bias_metadata["head_scores"].values() for layer in scores.values()
               for s in layer) == pool * len(bias_metadata["tasks"])
    assert "scored all 12 heads exactly" in exact.output
    exact_metadata = json.loads((tmp_path / "exact.instructions.json").read_text())["metadata"]
    assert "rescored_heads" not in exact_metadata and exact_metadata["of_heads"] == 12
    assert json.loads((tmp_path / "exact.instructions.json").read_text())["metadata"]["method"].startswith(
        "pasta-rag profile: one head steered at a time")
    assert not (tmp_path / "exact.json").exists()
    refused = CliRunner().invoke(app, ["profile", "--model", str(folder), "--out", str(out), "--job", "other"])
    assert refused.exit_code != 0 and "--job" in refused.output


def _pairs(heads: dict) -> list[tuple[int, int]]:
    return [(int(layer), head) for layer, hs in heads.items() for head in hs]
