"""Speed and memory: steered vs unsteered vs the dense-mask approach, same prompt, same machine.

Timings: one worker process per prompt length loads the model and times every variant in
rounds; each round times each variant once, in an order that changes from round to round
(``round_order``), so that a slow drift of the machine's load reaches all variants alike. The
steered / unsteered and dense / unsteered ratios are taken within a round (paired) and reported
as a median with its spread, so that a reader can tell a real difference from the noise.
Timings come from the stream the user sees: prefill = time to the first token, decode = tokens
per second after it.

Memory: each (variant, length) runs once more in a fresh process, so that its peak is its own:
on CPU the peak resident set size (minus what the loaded model already took), on CUDA torch's
peak allocation.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

VARIANTS = {
    "unsteered": {"attn_implementation": "sdpa", "steer": False},
    "steered": {"attn_implementation": "sdpa", "steer": True},
    "dense_mask": {"attn_implementation": "dense_sdpa", "steer": True},
}
"""dense_mask: the reference repository's approach, a (batch, heads, q, k) mask per layer."""

BASELINE = "unsteered"
"""The variant every ratio divides by."""

PASSAGE = (
    "The archive of the northern harbour lists every ship that docked there, its cargo, the weather on "
    "the day it arrived and the name of the clerk who signed the ledger. "
)


@dataclass(frozen=True)
class Timing:
    """One timed generation: which round, at which place in that round's order."""

    variant: str
    prompt_tokens: int
    new_tokens: int
    round: int
    position: int
    prefill_s: float
    decode_s: float

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first one (the first is part of the prefill) per second of decoding."""
        return (self.new_tokens - 1) / self.decode_s

    def as_dict(self) -> dict:
        return {**asdict(self), "decode_tokens_per_s": self.decode_tokens_per_s}


# --- the order of a round ----------------------------------------------------------------


def round_order(variants: Sequence[str], round_index: int) -> list[str]:
    """The variants in the order round ``round_index`` times them.

    Rotations of the list, then rotations of the reversed list: over ``len(variants)``
    rounds each variant takes each place once, and over twice that each variant follows each
    other one equally often, so neither the place in a round nor the variant run just before
    (a warm cache, a pending allocation) favours one variant.
    """
    count = len(variants)
    base = list(variants) if (round_index // count) % 2 == 0 else list(reversed(variants))
    shift = round_index % count
    return base[shift:] + base[:shift]


# --- the timing worker: all variants of one length, interleaved ------------------------


def time_rounds(
    source: str,
    prompt_tokens: int,
    new_tokens: int,
    rounds: int,
    device: str | None = None,
    heads: str | None = None,
    variants: Sequence[str] | None = None,
) -> list[Timing]:
    """Every variant ``rounds`` times at one prompt length, in this process, interleaved.

    The variants that share an attention implementation share one loaded model; the dense mask
    needs a model of its own.
    """
    variants = list(variants or VARIANTS)
    models = _load_models(source, variants, device, heads)
    prompt, spans = _prompt_of_length(next(iter(models.values())), prompt_tokens)
    for variant in variants:  # warm-up at the real length: kernels, allocator, first-touch pages
        _time_one(models[_implementation(variant)], prompt, spans, VARIANTS[variant]["steer"], 2)
    timings = []
    for round_index in range(rounds):
        for position, variant in enumerate(round_order(variants, round_index)):
            model = models[_implementation(variant)]
            prefill, decode = _time_one(model, prompt, spans, VARIANTS[variant]["steer"], new_tokens)
            timings.append(Timing(variant, prompt_tokens, new_tokens, round_index, position, prefill, decode))
    return timings


def _implementation(variant: str) -> str:
    return VARIANTS[variant]["attn_implementation"]


def _load_models(source: str, variants: Sequence[str], device: str | None, heads: str | None) -> dict[str, Any]:
    """One PastaModel per attention implementation the variants need."""
    from .. import PastaModel

    implementations = dict.fromkeys(_implementation(v) for v in variants)
    return {
        implementation: PastaModel.from_pretrained(
            source, device=device, heads=heads, attn_implementation=implementation
        )
        for implementation in implementations
    }


def _time_one(model, prompt: str, spans: list[tuple[int, int]], steer: bool, tokens: int) -> tuple[float, float]:
    """``_stream_once`` with the garbage collector held off until the run is over, so that a
    collection lands in no variant's timing."""
    with _collector_paused():
        return _stream_once(model, prompt, spans, steer, tokens)


def _stream_once(model, prompt: str, spans: list[tuple[int, int]], steer: bool, tokens: int) -> tuple[float, float]:
    """(seconds to the first token, seconds from it to the last) of one streamed generation.

    ``min_new_tokens`` = ``max_new_tokens``, so every variant decodes the same number of tokens
    whatever it generates.
    """
    started = time.perf_counter()
    first = None
    stream = model.stream(prompt, spans=spans, steer=steer, max_new_tokens=tokens, min_new_tokens=tokens)
    for _ in stream:
        first = first or time.perf_counter()
    ended = time.perf_counter()
    generation = getattr(stream, "generation", None)
    if generation is not None and generation.completion_tokens != tokens:
        raise RuntimeError(f"asked for {tokens} new tokens, got {generation.completion_tokens}")
    return first - started, ended - first


@contextmanager
def _collector_paused() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _prompt_of_length(model, tokens: int) -> tuple[str, list[tuple[int, int]]]:
    """A prompt of exactly ``tokens`` tokens whose first half is emphasized."""
    ids = model.tokenizer(PASSAGE * (tokens // 10 + 1), add_special_tokens=False)["input_ids"]
    text = model.tokenizer.decode(ids[:tokens])
    while len(model.tokenizer(text)["input_ids"]) > tokens:  # decoding may merge tokens differently
        text = text[:-1]
    return text, [(0, len(text) // 2)]


# --- the memory worker: one variant, one length, one run -------------------------------


def measure_memory(
    source: str,
    variant: str,
    prompt_tokens: int,
    new_tokens: int,
    device: str | None = None,
    heads: str | None = None,
) -> float:
    """Peak memory (MB) of one generation above the loaded model; call it in a fresh process,
    since peaks never go down."""
    model = _load_models(source, [variant], device, heads)[_implementation(variant)]
    steer = VARIANTS[variant]["steer"]
    prompt, spans = _prompt_of_length(model, prompt_tokens)
    _stream_once(model, *_prompt_of_length(model, 32), steer, 4)  # warm-up: kernels, allocator
    baseline = _memory_mb(model.device, reset=True)
    _stream_once(model, prompt, spans, steer, new_tokens)
    return _memory_mb(model.device, reset=False) - baseline


def _memory_mb(device: torch.device, reset: bool) -> float:
    if device.type == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.max_memory_allocated(device) / 2**20 if not reset else torch.cuda.memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _exact_memory_environment() -> dict[str, str]:
    """glibc keeps freed blocks mapped, so peak RSS would depend on allocation order (seen: 523 to
    793 MB for the same run); with tensors mmap-ed and unmapped on free, it follows live memory."""
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


# --- running the workers -------------------------------------------------------------------


def run_all(
    source: str,
    lengths: list[int],
    new_tokens: int,
    device: str | None = None,
    heads: str | None = None,
    variants: list[str] | None = None,
    rounds: int = 7,
) -> dict:
    """Every variant at every length: timings interleaved in one subprocess per length, each peak
    in its own subprocess; returns the report written by ``bench --json``."""
    variants = list(variants or VARIANTS)
    load_at_start = os.getloadavg()
    timings: list[dict] = []
    peaks: dict[tuple[str, int], float] = {}
    for length in lengths:
        common = {"source": source, "prompt_tokens": length, "new_tokens": new_tokens, "device": device,
                  "heads": heads}
        length_timings, length_peaks = _measure_length(common, variants, rounds)
        for row in summarize(length_timings, length_peaks):
            print(_line(row), file=sys.stderr, flush=True)
        timings += length_timings
        peaks.update(length_peaks)
    results = summarize(timings, peaks)
    return {
        "model": source,
        "machine": machine(device),
        "command": _command(source, lengths, new_tokens, rounds, device, heads),
        "new_tokens": new_tokens,
        "rounds": rounds,
        "variants": variants,
        "order": "each round times every variant once; round r uses round_order(variants, r)",
        "torch_threads": torch.get_num_threads(),
        "load_average": {"start": list(load_at_start), "end": list(os.getloadavg())},
        "results": results,
        "ratios": ratios(results, timings),
        "timings": timings,
    }


def _measure_length(
    common: dict, variants: list[str], rounds: int
) -> tuple[list[dict], dict[tuple[str, int], float]]:
    """One length: the interleaved timings in one worker, then each variant's peak in its own."""
    timings = _run_worker("timings", {**common, "rounds": rounds, "variants": variants}, os.environ)
    peaks = {
        # In a process whose allocator returns freed tensors at once (slower, so untimed).
        (variant, common["prompt_tokens"]): _run_worker("memory", {**common, "variant": variant},
                                                        _exact_memory_environment())
        for variant in variants
    }
    return timings, peaks


def _command(source: str, lengths: list[int], new_tokens: int, rounds: int, device: str | None,
             heads: str | None) -> str:
    """The ``pasta-rag bench`` command line that reruns this measurement."""
    command = (f"pasta-rag bench --model {source} --lengths {','.join(map(str, lengths))} "
               f"--new-tokens {new_tokens} --rounds {rounds}")
    if device:
        command += f" --device {device}"
    if heads:
        command += f" --heads {heads}"
    return command


def _run_worker(mode: str, arguments: dict, environment: Mapping[str, str]) -> Any:
    command = [sys.executable, "-m", "pasta_rag.research.bench", mode, json.dumps(arguments)]
    worker = subprocess.run(command, check=False, capture_output=True, text=True, env=dict(environment))
    if worker.returncode:
        what = arguments.get("variant") or ", ".join(arguments["variants"])
        raise RuntimeError(
            f"bench {mode} worker for {what} at {arguments['prompt_tokens']} tokens failed:\n{worker.stderr[-2000:]}"
        )
    return json.loads(worker.stdout.strip().splitlines()[-1])


# --- the report: medians, spreads, paired ratios --------------------------------------------


def spread(values: Sequence[float], digits: int | None = None) -> dict:
    """Median, quartiles (inclusive method: they stay within the values), minimum and maximum.

    The median and the interquartile range shrug off a single run that another process slowed
    down, where a mean would move; min and max show how far the runs went at all.
    """
    if not values:
        raise ValueError("no values to summarize")
    ordered = sorted(values)
    q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else ordered * 3
    summary = {"median": statistics.median(ordered), "q1": q1, "q3": q3, "min": ordered[0], "max": ordered[-1]}
    if digits is not None:
        summary = {key: round(value, digits) for key, value in summary.items()}
    return {**summary, "n": len(ordered)}


def summarize(timings: list[dict], peaks: Mapping[tuple[str, int], float]) -> list[dict]:
    """One row per (variant, length): spreads of prefill seconds and decode tokens/s, and the peak."""
    rows = []
    for variant, length in dict.fromkeys((t["variant"], t["prompt_tokens"]) for t in timings):
        runs = [t for t in timings if t["variant"] == variant and t["prompt_tokens"] == length]
        rows.append({
            "variant": variant,
            "prompt_tokens": length,
            "new_tokens": runs[0]["new_tokens"],
            "prefill_s": spread([t["prefill_s"] for t in runs]),
            "decode_tokens_per_s": spread([t["decode_tokens_per_s"] for t in runs]),
            "peak_memory_mb": peaks.get((variant, length)),
        })
    return rows


def paired(timings: list[dict], variant: str, length: int, key: str) -> list[float]:
    """``key`` of ``variant`` over that of the baseline timed in the same round, round by round.

    Pairing within a round cancels what the machine's load did to that round as a whole; rounds
    where either side is missing are left out rather than matched with another round.
    """
    def by_round(name: str) -> dict[int, float]:
        return {t["round"]: t[key] for t in timings if t["variant"] == name and t["prompt_tokens"] == length}

    base, other = by_round(BASELINE), by_round(variant)
    return [other[r] / base[r] for r in sorted(base) if r in other]


def ratios(results: list[dict], timings: list[dict]) -> dict:
    """Each variant against the baseline at the same length: paired per-round decode-speed and
    prefill-time ratios (median, spread and the rounds' own values), and the peak memory ratio."""
    peaks = {(r["variant"], r["prompt_tokens"]): r.get("peak_memory_mb") for r in results}
    table = {}
    for variant, length in dict.fromkeys((t["variant"], t["prompt_tokens"]) for t in timings):
        decode = paired(timings, variant, length, "decode_tokens_per_s")
        if variant == BASELINE or not decode:
            continue
        prefill = paired(timings, variant, length, "prefill_s")
        entry = {
            "decode_speed_ratio": {**spread(decode, 3), "per_round": [round(x, 3) for x in decode]},
            "prefill_time_ratio": {**spread(prefill, 3), "per_round": [round(x, 3) for x in prefill]},
        }
        peak, base_peak = peaks.get((variant, length)), peaks.get((BASELINE, length))
        if peak is not None and base_peak is not None:
            entry["peak_memory_ratio"] = round(max(peak, 1) / max(base_peak, 1), 3)
        table[f"{variant}@{length}"] = entry
    return table


def machine(device: str | None) -> str:
    if device and device.startswith("cuda") or (device is None and torch.cuda.is_available()):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def _line(row: dict) -> str:
    prefill, decode = row["prefill_s"], row["decode_tokens_per_s"]
    return (
        f"{row['variant']:>10} {row['prompt_tokens']:>5} tokens: prefill {prefill['median']:.3f} s "
        f"[{prefill['min']:.3f}, {prefill['max']:.3f}], decode {decode['median']:.2f} tok/s "
        f"[{decode['min']:.2f}, {decode['max']:.2f}], peak +{row['peak_memory_mb']:.0f} MB"
    )


def _worker(mode: str, arguments: dict) -> Any:
    """What a worker process prints (as JSON) for ``run_all``."""
    if mode == "timings":
        return [t.as_dict() for t in time_rounds(**arguments)]
    if mode == "memory":
        return measure_memory(**arguments)
    raise ValueError(f"unknown bench worker mode {mode!r}")


if __name__ == "__main__":
    print(json.dumps(_worker(sys.argv[1], json.loads(sys.argv[2]))))
