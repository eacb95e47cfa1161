"""The pasta-rag command on a tiny model saved to a folder (the local-directory loading path)."""

from __future__ import annotations

import io
import json

import pytest
from tiny import saved_tiny_model
from typer.testing import CliRunner

from pasta_rag.cli import app
from pasta_rag.research.bench import ratios, round_order, run_all, spread, summarize

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = saved_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
    (folder / "heads.json").write_text(json.dumps({"1": [0, 2], "2": [1]}))
    return folder


def test_help_explains_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "ask" in result.output and "bench" in result.output and "steers" in result.output


def test_ask_prints_both_answers_as_json(model_dir, tmp_path):
    context = tmp_path / "context.txt"
    context.write_text("The sky is green today.")
    args = ["ask", "What colour is the sky?", "--context-file", str(context), "--model", str(model_dir),
            "--heads", str(model_dir / "heads.json"), "--max-new-tokens", "6", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)  # progress bars of transformers go to stderr
    assert set(answers) == {"model", "prompt_format", "unsteered", "steered"}
    assert answers["prompt_format"] == "chat template"
    harder = runner.invoke(app, [*args, "--steer-generated", "--generated-alpha", "1e-6"])
    assert harder.exit_code == 0, harder.output
    assert json.loads(harder.stdout)["unsteered"] == answers["unsteered"]


def test_ask_reports_bad_input_without_a_traceback(model_dir):
    base = ["ask", "Q?", "--model", str(model_dir), "--heads", str(model_dir / "heads.json"), "--context", "abc"]
    missing = runner.invoke(app, [*base, "--emphasis", "xyz"])
    assert missing.exit_code == 2 and "'xyz' does not occur in the prompt" in missing.output
    bad_alpha = runner.invoke(app, [*base, "--alpha", "0"])
    assert bad_alpha.exit_code == 2 and "alpha must be > 0" in bad_alpha.output
    bad_generated = runner.invoke(app, [*base, "--steer-generated", "--generated-alpha", "0"])
    assert bad_generated.exit_code == 2 and "generated_alpha must be a number > 0" in bad_generated.output
    no_context = runner.invoke(app, ["ask", "Q?", "--model", str(model_dir)])
    assert no_context.exit_code != 0 and "--context" in no_context.output


def test_bench_measures_every_variant(model_dir):
    report = run_all(str(model_dir), [24], new_tokens=3, device="cpu", heads=str(model_dir / "heads.json"), rounds=2)
    variants = {r["variant"] for r in report["results"]}
    assert variants == {"unsteered", "steered", "dense_mask"}
    assert all(r["prompt_tokens"] == 24 and r["decode_tokens_per_s"]["median"] > 0 for r in report["results"])
    assert set(report["ratios"]) == {"steered@24", "dense_mask@24"}
    assert report["rounds"] == 2 and "--rounds 2" in report["command"] and "--new-tokens 3" in report["command"]
    rounds = [[t["variant"] for t in report["timings"] if t["round"] == r] for r in range(2)]
    assert all(sorted(names) == sorted(variants) for names in rounds) and rounds[0] != rounds[1]
    assert all(r["peak_memory_mb"] is not None for r in report["results"])


def test_bench_failures_show_the_worker_error(model_dir):
    with pytest.raises(RuntimeError, match="ships no head set"):
        run_all(str(model_dir), [24], new_tokens=3, device="cpu", variants=["steered"], rounds=1)


def test_bench_prints_medians_and_paired_ratios(monkeypatch):
    timings = [_timing(v, 8, r, tps, 1.0) for r in range(3) for v, tps in (("unsteered", 10.0), ("steered", 9.0))]
    results = summarize(timings, {("unsteered", 8): 100.0, ("steered", 8): 101.0})
    report = {"model": "m", "machine": "x", "rounds": 3, "results": results, "ratios": ratios(results, timings)}
    seen = {}

    def fake_run_all(source, lengths, new_tokens, device, heads, rounds):
        seen.update(lengths=lengths, new_tokens=new_tokens, rounds=rounds)
        return report

    monkeypatch.setattr("pasta_rag.research.bench.run_all", fake_run_all)
    result = runner.invoke(app, ["bench", "--lengths", "8", "--new-tokens", "9", "--rounds", "3"])
    assert result.exit_code == 0, result.output
    assert seen == {"lengths": [8], "new_tokens": 9, "rounds": 3}
    assert "median [min, max] of 3 rounds" in result.output and "steered@8" in result.output
    assert "0.900" in result.output and "1.01" in result.output  # the paired decode ratio, the memory ratio
    defaults = runner.invoke(app, ["bench"])
    assert defaults.exit_code == 0 and seen == {"lengths": [256, 1024, 4096], "new_tokens": 128, "rounds": 7}


def _timing(variant, length, round_index, decode_tokens_per_s, prefill_s):
    return {"variant": variant, "prompt_tokens": length, "new_tokens": 9, "round": round_index, "position": 0,
            "prefill_s": prefill_s, "decode_s": 8 / decode_tokens_per_s, "decode_tokens_per_s": decode_tokens_per_s}


def test_ratios_compare_against_unsteered_at_the_same_length():
    results = [
        {"variant": "unsteered", "prompt_tokens": 8, "peak_memory_mb": 100.0},
        {"variant": "steered", "prompt_tokens": 8, "peak_memory_mb": 105.0},
    ]
    timings = [_timing("unsteered", 8, 0, 10.0, 1.0), _timing("steered", 8, 0, 9.5, 1.2)]
    def one_round(ratio):
        return {"median": ratio, "q1": ratio, "q3": ratio, "min": ratio, "max": ratio, "n": 1, "per_round": [ratio]}

    decode, prefill = one_round(0.95), one_round(1.2)
    assert ratios(results, timings) == {
        "steered@8": {"decode_speed_ratio": decode, "prefill_time_ratio": prefill, "peak_memory_ratio": 1.05}
    }


def test_ratios_pair_each_round_with_the_unsteered_run_of_the_same_round():
    # The machine slows down in round 1 and speeds up in round 2; steered is 10% slower in every round
    # but round 1, where it is 10% faster. Medians taken apart (22 / 20) would say 1.1; paired: 0.9.
    unsteered = {0: 10.0, 1: 20.0, 2: 40.0}
    steered = {0: 9.0, 1: 22.0, 2: 36.0}
    timings = [_timing("steered", 8, r, steered[r], 2 * unsteered[r]) for r in (2, 0, 1)]
    timings += [_timing("unsteered", 8, r, unsteered[r], unsteered[r]) for r in (1, 2, 0)]
    timings += [_timing("unsteered", 16, r, 1.0, 1.0) for r in range(3)]  # another length: never a partner
    entry = ratios([], timings)["steered@8"]
    assert entry["decode_speed_ratio"]["per_round"] == [0.9, 1.1, 0.9]
    assert entry["decode_speed_ratio"]["median"] == 0.9
    assert (entry["decode_speed_ratio"]["min"], entry["decode_speed_ratio"]["max"]) == (0.9, 1.1)
    assert entry["prefill_time_ratio"]["per_round"] == [2.0, 2.0, 2.0]
    assert "peak_memory_ratio" not in entry  # no memory measured here
    assert set(ratios([], timings)) == {"steered@8"}


def test_ratios_leave_out_rounds_without_a_partner():
    timings = [_timing("unsteered", 8, 0, 10.0, 1.0), _timing("steered", 8, 0, 5.0, 1.0),
               _timing("steered", 8, 1, 100.0, 1.0)]
    assert ratios([], timings)["steered@8"]["decode_speed_ratio"]["per_round"] == [0.5]


def test_spread_gives_median_quartiles_and_range():
    skewed = spread([100.0, 1.0, 4.0, 2.0, 3.0])  # unsorted, and its mean (22) is far from its median
    assert skewed == {"median": 3.0, "q1": 2.0, "q3": 4.0, "min": 1.0, "max": 100.0, "n": 5}
    even = spread([4.0, 1.0, 3.0, 2.0])
    assert even["median"] == 2.5 and (even["min"], even["max"]) == (1.0, 4.0) and even["q1"] < 2.5 < even["q3"]
    assert spread([7.0])["median"] == spread([7.0])["q1"] == spread([7.0])["max"] == 7.0
    with pytest.raises(ValueError):
        spread([])


def test_summarize_gives_each_variant_its_own_spread():
    timings = [_timing("unsteered", 8, r, tps, 0.1 * (r + 1)) for r, tps in enumerate([10.0, 30.0, 20.0])]
    timings += [_timing("steered", 8, r, 100.0, 1.0) for r in range(3)]
    rows = {row["variant"]: row for row in summarize(timings, {("unsteered", 8): 50.0})}
    assert rows["unsteered"]["decode_tokens_per_s"]["median"] == 20.0
    assert rows["unsteered"]["prefill_s"]["max"] == pytest.approx(0.3)
    assert rows["steered"]["decode_tokens_per_s"]["median"] == 100.0
    assert rows["unsteered"]["peak_memory_mb"] == 50.0 and rows["steered"]["peak_memory_mb"] is None


def test_round_order_balances_places_and_predecessors():
    variants = ["unsteered", "steered", "dense_mask"]
    orders = [round_order(variants, r) for r in range(6)]
    assert all(sorted(order) == sorted(variants) for order in orders)
    for place in range(3):  # every 3 rounds, each variant takes each place once
        assert sorted(order[place] for order in orders[:3]) == sorted(variants)
    pairs = [(order[i], order[i + 1]) for order in orders for i in range(2)]
    assert all(pairs.count((a, b)) == 2 for a in variants for b in variants if a != b)



def test_profile_refuses_fewer_candidates_than_the_largest_k(model_dir, tmp_path):
    record = {"id": "c1", "task": "knowledge_conflict", "context": "The tower is in Rome.", "question": "Where is it?",
              "target_new": "Rome", "target_true": "Paris"}
    tasks = tmp_path / "conflicts.jsonl"
    tasks.write_text(json.dumps(record) + "\n")
    out = tmp_path / "h.json"
    result = runner.invoke(app, ["profile", "--model", str(model_dir), "--train", str(tasks), "--dev", str(tasks),
                                 "--out", str(out), "--candidates", "0.5"])
    assert result.exit_code == 2
    assert "candidates must be at least 1" in result.output and "--exact" in result.output
    assert not out.exists()


def test_each_profiling_bar_is_completed_when_the_next_stage_opens_and_at_the_end():
    from rich.console import Console
    from rich.progress import Progress

    from pasta_rag.cli import StageBars

    with Progress(console=Console(file=io.StringIO())) as progress:
        stages = StageBars(progress, "context: ")
        advance = stages.open("rescoring", total=1.0)
        for _ in range(10):
            advance(0.1)  # ten float shares sum to a hair under 1
        first = progress.tasks[0]
        assert not first.finished
        stages.open("racing", total=3)(2)
        assert first.finished and first.completed == 1.0
        assert not progress.tasks[1].finished
        stages.finish()
        assert [task.finished for task in progress.tasks] == [True, True]
        assert progress.tasks[1].description == "context: racing"
