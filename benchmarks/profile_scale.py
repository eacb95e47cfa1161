"""Profiler cost at scale, on paper: each stage's measured cost on the default model, projected by FLOP counts.

What it takes to profile the ``context`` job (the shipped tasks: short and long knowledge conflicts, chosen
on three dev sets) for a Llama-like model of 1B, 8B or 70B parameters, on this machine's CPU and on one GPU,
for three paths: the plain loop (one forward per head per example), the exact batched profiler with the dev
choice on every candidate (``--exact``), and screening + rescoring + the raced dev choice (the default; its share
of the full dev choice's time is ``dev_racing.py``'s, ``--racing``).

Calibration, on the default model (SmolLM2-135M, the only model measured on every stage):
- the plain loop and the exact batched profiler: ``results/profile_speed_smollm2.json``;
- screening against the exact profiler on the same rows: ``results/profile_screening_smollm2.json``;
- the dev choice (greedy generation, batched): timed here on the first ``--dev-examples`` records of each
  dev set, steered with the model's shipped context set, twice: one candidate answering alone (how the dev
  choice ran before; the ``exact_before`` and plain-loop paths) and ``--dev-candidates`` candidates answering
  the same examples together, each prompt's start computed once (how it runs now; the other paths).
Each stage's seconds on the default model divided by its FLOP count gives that stage's effective FLOP/s on
this CPU; the larger models get the same FLOP/s (conservative: bigger matmuls run closer to the peak).
FLOPs come from the model shapes, built here as transformers configs (no hub): 2 x (weights used per
token) plus the attention scores and values over the prompt.

On the GPU every stage runs at ``--gpu-flops`` x ``--gpu-utilisation`` (float32: the profiler scores in
float32, because bfloat16 changes the head order), except the decoding of the dev answers, which is bound by
reading the weights once per step of a batch: ``--gpu-bandwidth`` x ``--gpu-utilisation`` per batch (8 rows
alone; shared, as many as ``dev_answers`` packs).

    python benchmarks/profile_scale.py --out benchmarks/results/profile_scale.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig

from pasta_rag import PastaModel
from pasta_rag.research.bench import machine
from pasta_rag.research.evaluation import NEW_TOKENS, evaluate
from pasta_rag.research.profiling import JOBS, Candidate, Checkpoint, scoring_row, shipped_tasks
from pasta_rag.research.profiling.dev_answers import MAX_ROWS, ROW_TOKENS
from pasta_rag.research.profiling.dev_choice import FINALISTS
from pasta_rag.research.profiling.selection import DevScorer

RESULTS = Path(__file__).resolve().parent / "results"

SHAPES = {
    # name: (hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings)
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152, True),  # the default model, the calibration
    "llama-1b": (2048, 8192, 16, 32, 8, 128256, True),  # Llama 3.2 1B's shape
    "llama-8b": (4096, 14336, 32, 32, 8, 128256, False),  # Llama 3.1 8B's
    "llama-70b": (8192, 28672, 80, 64, 8, 128256, False),  # Llama 3.1 70B's
}
DEV_BATCH = 8  # evaluate()'s batch size


def config(name: str) -> LlamaConfig:
    hidden, intermediate, layers, heads, kv_heads, vocab, tied = SHAPES[name]
    return LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                       tie_word_embeddings=tied)


@dataclass(frozen=True)
class Shape:
    """What the FLOP counts need from a config."""

    layer_weights: int  # matmul weights of all decoder layers
    embedding: int  # the output projection's weights (the input embedding is a lookup)
    parameters: int
    layers: int
    heads: int
    attention_width: int  # heads x head_dim

    @classmethod
    def of(cls, c: LlamaConfig) -> Shape:
        head_dim = c.hidden_size // c.num_attention_heads
        attention = 2 * c.hidden_size * c.hidden_size + 2 * c.hidden_size * c.num_key_value_heads * head_dim
        per_layer = attention + 3 * c.hidden_size * c.intermediate_size
        embedding = c.vocab_size * c.hidden_size
        parameters = c.num_hidden_layers * per_layer + embedding * (1 if c.tie_word_embeddings else 2)
        return cls(c.num_hidden_layers * per_layer, embedding, parameters, c.num_hidden_layers,
                   c.num_hidden_layers * c.num_attention_heads, c.num_attention_heads * head_dim)

    def prefill(self, tokens: float) -> float:
        """FLOPs of one forward over ``tokens`` prompt tokens, logits at the last position only."""
        attention = 2 * 2 * self.layers * self.attention_width * tokens * (tokens + 1) / 2
        return 2 * self.layer_weights * tokens + attention + 2 * self.embedding

    def decode(self, context: float) -> float:
        """FLOPs of one generated token after ``context`` tokens."""
        return 2 * self.layer_weights + 2 * 2 * self.layers * self.attention_width * context + 2 * self.embedding


def mean_tokens(model: PastaModel, sets: dict) -> float:
    rows = [scoring_row(model, example) for examples in sets.values() for example in examples]
    return sum(len(row.input_ids) for row in rows) / len(rows)


def mean_prefix(model: PastaModel, sets: dict) -> float:
    """Mean prompt tokens before the first emphasized one: what every candidate computes alike."""
    rows = [scoring_row(model, example) for examples in sets.values() for example in examples]
    return sum(row.first_affected for row in rows) / len(rows)


def time_dev_alone(model: PastaModel, dev_sets: dict, count: int) -> tuple[float, int]:
    """Seconds per dev answer of one candidate answering alone (``evaluate``'s batches: the dev choice before
    candidates shared their prompts), and the answers timed."""
    sample = [example for examples in dev_sets.values() for example in examples[:count]]
    started = time.perf_counter()
    evaluate(model, sample, ["pasta"], es=False)
    return (time.perf_counter() - started) / len(sample), len(sample)


def time_dev_shared(model: PastaModel, dev_sets: dict, count: int, candidates: int) -> tuple[float, int]:
    """Seconds per dev answer when ``candidates`` candidates answer the same examples together (``DevScorer``:
    each prompt's start computed once, several candidates per batch), and the answers timed."""
    pairs = model.own_head_set("context").pairs()
    alphas = JOBS["context"].alphas
    pool = [Candidate(i, alphas[i % len(alphas)], pairs[i // len(alphas):], {}) for i in range(candidates)]
    scorer = DevScorer(model, {name: examples[:count] for name, examples in dev_sets.items()},
                       Checkpoint.open(None, model.name, 0.01), steer_generated=True)
    started = time.perf_counter()
    for name, examples in scorer.dev_sets.items():
        scorer(pool, name, len(examples))
    answers = candidates * sum(len(examples) for examples in scorer.dev_sets.values())
    return (time.perf_counter() - started) / answers, answers


def shared_dev_flops(shape: Shape, tokens: float, prefix: float, new_tokens: int, candidates: int) -> float:
    """FLOPs of one dev answer when ``candidates`` share the example: the prompt from its emphasis on, the start
    computed once for them all, then the decoded tokens."""
    rest = shape.prefill(tokens) - shape.prefill(prefix)  # the later tokens, attending to the whole prompt
    return rest + shape.prefill(prefix) / candidates + new_tokens * shape.decode(tokens + new_tokens / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev-examples", type=int, default=8, help="per dev set, for timing the dev choice")
    parser.add_argument("--dev-candidates", type=int, default=8,
                        help="candidates answering the timed examples together (a race's rounds keep 20 down to 2)")
    parser.add_argument("--largest-set-share", type=float, default=0.24,
                        help="the largest head set tried, as a share of all heads, for the projected models "
                        "(default_ks: 0.24)")
    parser.add_argument("--candidates", type=float, default=2.0,
                        help="the rescored pool: candidates x the largest head set")
    parser.add_argument("--screened", type=Path, default=Path("benchmarks/results/screened_choice_smollm2.json"),
                        help="screened_choice.py's result on the default model: its rescored pool")
    parser.add_argument("--gpu-flops", type=float, default=67e12, help="float32 peak (H100/H200 SXM, no TF32)")
    parser.add_argument("--gpu-bandwidth", type=float, default=4.8e12, help="bytes/s (H200)")
    parser.add_argument("--gpu-memory", type=float, default=141e9, help="bytes")
    parser.add_argument("--gpu-utilisation", type=float, default=0.5)
    parser.add_argument("--racing", type=Path, default=Path("benchmarks/results/dev_racing_smollm2.json"),
                        help="dev_racing.py's result: the share of the full dev choice's time a race takes")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    job = JOBS["context"]
    train, dev_sets = shipped_tasks("train", job.train), shipped_tasks("dev", job.dev)
    model = PastaModel.from_pretrained("default")
    train_tokens, dev_tokens = mean_tokens(model, train), mean_tokens(model, dev_sets)
    dev_prefix = mean_prefix(model, dev_sets)
    dev_s, dev_timed = time_dev_alone(model, dev_sets, args.dev_examples)
    shared_s, shared_timed = time_dev_shared(model, dev_sets, args.dev_examples, args.dev_candidates)
    new_tokens = NEW_TOKENS["knowledge_conflict"]

    race_share = json.loads(args.racing.read_text())["summary"]["time_share"]
    speed = json.loads((RESULTS / "profile_speed_smollm2.json").read_text())
    screening = json.loads((RESULTS / "profile_screening_smollm2.json").read_text())
    speed_tokens = mean_tokens(model, shipped_tasks("train", tuple(speed["tasks"])))
    speed_examples = sum(speed["tasks"].values())
    same_rows = screening["tasks"].values()
    screening_share = sum(t["outputs"]["screening_s"] for t in same_rows) / sum(t["exact_s"] for t in same_rows)

    base = Shape.of(config("smollm2-135m"))
    assert base.heads == speed["heads"], "the calibration model's shape is not the measured model's"
    plain_s = speed["plain_s_estimated"] / speed_examples  # per example, every head
    cpu_flops = base.heads * base.prefill(speed_tokens) / plain_s  # the plain loop's effective FLOP/s
    exact_factor = 1 / speed["speedup"]  # the exact profiler's share of the plain loop's work
    screening_forwards = screening_share * exact_factor * base.heads  # screening, in plain forwards
    dev_flops_base = base.prefill(dev_tokens) + new_tokens * base.decode(dev_tokens + new_tokens / 2)
    cpu_dev_flops = dev_flops_base / dev_s
    cpu_shared_flops = shared_dev_flops(base, dev_tokens, dev_prefix, new_tokens, args.dev_candidates) / shared_s

    n_train = sum(len(examples) for examples in train.values())
    n_dev = sum(len(examples) for examples in dev_sets.values())
    # the default ks x alphas, then the other exponents at the best FINALISTS
    n_candidates = 5 * len(job.alphas) + FINALISTS * (len(job.generated_exponents) - 1)
    gpu = args.gpu_flops * args.gpu_utilisation

    projections = {}
    for name in SHAPES:
        shape = Shape.of(config(name))
        if name == "smollm2-135m":  # the default model: the pool its screening gave
            pool = json.loads(args.screened.read_text())["summary"]["rescored"]
        else:
            pool = min(shape.heads, round(args.candidates * args.largest_set_share * shape.heads))
        forward = shape.prefill(train_tokens)
        flops = {
            "plain_loop": n_train * shape.heads * forward,
            "exact_scoring": n_train * shape.heads * forward * exact_factor,
            "screening": n_train * screening_forwards * forward,
            "rescoring": n_train * pool * forward * exact_factor,
        }
        dev_compute = shape.prefill(dev_tokens) + new_tokens * shape.decode(dev_tokens + new_tokens / 2)
        dev_decode_bytes = new_tokens * 4 * shape.parameters / DEV_BATCH  # weights read once per step of a batch
        shared_compute = shared_dev_flops(shape, dev_tokens, dev_prefix, new_tokens, args.dev_candidates)
        rows = min(MAX_ROWS, ROW_TOKENS / (dev_tokens - dev_prefix))  # a shared batch's rows
        shared_decode_bytes = new_tokens * 4 * shape.parameters / rows
        dev_total = n_candidates * n_dev
        entry = {"parameters": shape.parameters, "heads": shape.heads, "rescored": pool,
                 "float32_weights_gb": round(4 * shape.parameters / 1e9, 1), "flops": {k: f"{v:.3g}" for k, v in
                                                                                       flops.items()}}
        bandwidth = args.gpu_bandwidth * args.gpu_utilisation
        for device, rate, dev_one, shared_one in (
            ("cpu", cpu_flops, dev_compute / cpu_dev_flops, shared_compute / cpu_shared_flops),
            ("gpu", gpu, dev_compute / gpu + dev_decode_bytes / bandwidth,
             shared_compute / gpu + shared_decode_bytes / bandwidth),
        ):
            stages = {stage: value / rate for stage, value in flops.items()} | {
                "dev_choice_alone": dev_one * dev_total, "dev_choice": shared_one * dev_total,
                "dev_race": shared_one * dev_total * race_share}
            paths = {
                "plain_loop_plus_dev": stages["plain_loop"] + stages["dev_choice_alone"],
                "exact_before": stages["exact_scoring"] + stages["dev_choice_alone"],
                "exact": stages["exact_scoring"] + stages["dev_choice"],
                "screened_full_dev": stages["screening"] + stages["rescoring"] + stages["dev_choice"],
                "screened": stages["screening"] + stages["rescoring"] + stages["dev_race"],
            }
            paths_ratio = {"exact_before_over_screened": round(paths["exact_before"] / paths["screened"], 2),
                           "exact_over_screened": round(paths["exact"] / paths["screened"], 2),
                           "plain_over_screened": round(paths["plain_loop_plus_dev"] / paths["screened"], 2)}
            memory = 23e9 if device == "cpu" else args.gpu_memory  # this machine's RAM / the GPU's
            entry[device] = {"fits_in_float32": 4 * shape.parameters < memory,
                             "stage_s": {k: round(v, 1) for k, v in stages.items()},
                             "path_h": {k: round(v / 3600, 2) for k, v in paths.items()}, "speedup": paths_ratio}
        projections[name] = entry

    report = {
        "command": "python benchmarks/profile_scale.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out") + f" --out {args.out}",
        "machine": f"{machine(str(model.device))}, {torch.get_num_threads()} threads, float32",
        "job": "context",
        "work": {"train_examples": n_train, "train_tokens_mean": round(train_tokens, 1), "dev_examples": n_dev,
                 "dev_tokens_mean": round(dev_tokens, 1), "dev_prefix_mean": round(dev_prefix, 1), "new_tokens": new_tokens, "dev_candidates": n_candidates},
        "calibration": {
            "plain_loop_s_per_example": round(plain_s, 2), "from": "results/profile_speed_smollm2.json",
            "cpu_effective_gflops": round(cpu_flops / 1e9, 1),
            "exact_share_of_plain": round(exact_factor, 3),
            "screening_share_of_exact": round(screening_share, 3),
            "screening_in_plain_forwards": round(screening_forwards, 2),
            "dev_s_per_answer_alone": round(dev_s, 3), "dev_answers_timed_alone": dev_timed,
            "dev_effective_gflops_alone": round(cpu_dev_flops / 1e9, 1),
            "dev_s_per_answer_shared": round(shared_s, 3), "dev_answers_timed_shared": shared_timed,
            "dev_candidates_sharing": args.dev_candidates,
            "dev_effective_gflops_shared": round(cpu_shared_flops / 1e9, 1),
            "race_time_share": race_share, "race_from": str(args.racing),
        },
        "gpu_assumed": {"flops": args.gpu_flops, "bandwidth": args.gpu_bandwidth, "memory": args.gpu_memory,
                        "utilisation": args.gpu_utilisation},
        "models": projections,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
