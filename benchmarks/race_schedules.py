"""How fast may a race narrow? Race schedules replayed on a full dev grid's recorded answers, in many orders.

``dev_racing.py`` answered every (k, alpha) candidate of the exact grid on the whole dev split, batch by batch.
A race asks for prefixes of those batches, so any schedule (``racing.Schedule``: the first round's share of each
dev set, the share each cut keeps) can be replayed on them without answering again. One order of the dev
examples is one draw of luck; this replays each schedule on ``--orders`` random orders of each set's batches
(the same orders for every schedule) and reports how often the race keeps the full grid's pick, the objective
it gives up (the full grid's best minus the pick's whole-dev objective) and its answers and estimated seconds
(the median recorded batch time of each set).

    python benchmarks/race_schedules.py --answers benchmarks/results/dev_racing_smollm2.json \
        --out benchmarks/results/race_schedules_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

from dev_racing import BATCH, answers_by_set, batch_seconds, tally

from pasta_rag.research.profiling.racing import Schedule, one_at_a_time, race, rank, with_tallies
from pasta_rag.research.profiling.selection import Candidate

FIRST_SHARES = (1 / 8, 1 / 16, 1 / 32)
KEEPS = (1 / 2, 1 / 3, 1 / 4)


def grid(results: dict) -> dict[str, Candidate]:
    """The first stage's candidates (exponent 1), by their recorded name. Replaying needs no heads: k stands in
    for them, since a larger k intersects more heads, so rank's tie rule (fewer heads first) orders them alike."""
    named = {}
    for name in results["batches"]:
        k, alpha, exponent = (float(part.split("=")[1]) for part in name.split())
        if exponent == 1.0:
            named[name] = Candidate(int(k), alpha, [(0, i) for i in range(int(k))], {}, exponent)
    return named


def replay(results: dict, named: dict[str, Candidate], orders: dict[str, list[int]], schedule: Schedule,
           seconds: dict[str, float]) -> dict:
    """One race on the recorded batches taken in ``orders``: its pick, what it asked for and what that costs."""
    sizes = results["dev_sizes"]
    names = {(c.k, c.alpha): name for name, c in named.items()}

    def score(candidate: Candidate, set_name: str, end: int):
        recorded = results["batches"][names[(candidate.k, candidate.alpha)]][set_name]
        return tally([recorded[i] for i in orders[set_name]], end)

    ranked = race(list(named.values()), sizes, one_at_a_time(score), BATCH, schedule)
    pick, answered = ranked[0], answers_by_set(ranked)
    return {"pick": names[(pick.k, pick.alpha)], "answers": sum(answered.values()),
            "seconds": sum(count / BATCH * seconds[name] for name, count in answered.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=Path, required=True, help="dev_racing.py's results (a full grid)")
    parser.add_argument("--orders", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = json.loads(args.answers.read_text())
    named = grid(results)
    sizes = results["dev_sizes"]
    tallied = {name: with_tallies(c, {s: tally(results["batches"][name][s], n) for s, n in sizes.items()})
               for name, c in named.items()}
    whole = {name: c.objective for name, c in tallied.items()}
    best = rank(list(tallied.values()))[0]  # the full grid's pick, with rank's tie rule
    full_pick = next(name for name, c in named.items() if (c.k, c.alpha) == (best.k, best.alpha))
    seconds = batch_seconds(results)
    full_seconds = sum(len(named) * size / BATCH * seconds[name] for name, size in sizes.items())
    generator = random.Random(args.seed)
    batch_counts = {name: len(results["batches"][full_pick][name]) for name in sizes}
    orders = [{name: list(range(count)) for name, count in batch_counts.items()}]  # the recorded order first
    for _ in range(args.orders - 1):
        orders.append({name: generator.sample(range(count), count) for name, count in batch_counts.items()})

    schedules = {}
    for first_share in FIRST_SHARES:
        for keep in KEEPS:
            schedule = Schedule(first_share, keep)
            runs = [replay(results, named, order, schedule, seconds) for order in orders]
            regrets = [whole[full_pick] - whole[run["pick"]] for run in runs]
            schedules[f"first_share=1/{round(1 / first_share)} keep=1/{round(1 / keep)}"] = {
                "recorded_order": {"pick": runs[0]["pick"], "regret": round(regrets[0], 4),
                                   "answers": runs[0]["answers"]},
                "keeps_full_pick": round(sum(run["pick"] == full_pick for run in runs) / len(runs), 3),
                "regret_mean": round(statistics.mean(regrets), 4),
                "regret_p95": round(sorted(regrets)[int(0.95 * len(regrets))], 4),
                "within_0.01": round(sum(regret <= 0.01 for regret in regrets) / len(regrets), 3),
                "answers_mean": round(statistics.mean(run["answers"] for run in runs)),
                "time_share": round(statistics.mean(run["seconds"] for run in runs) / full_seconds, 3),
            }
            print(list(schedules)[-1], schedules[list(schedules)[-1]], file=sys.stderr, flush=True)
    out = {"command": "python " + " ".join(sys.argv), "answers": str(args.answers), "candidates": len(named),
           "dev_sizes": sizes, "orders": args.orders, "seed": args.seed, "full_pick": full_pick,
           "full_objective": round(whole[full_pick], 4), "full_answers": len(named) * sum(sizes.values()),
           "median_batch_s": {name: round(value, 2) for name, value in seconds.items()}, "schedules": schedules}
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
