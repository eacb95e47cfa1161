"""Speed and memory: steered vs unsteered vs the dense-mask approach, same prompt, same machine.

Each (variant, length) runs in a fresh process, so that its peak memory is its
own: on CPU the peak resident set size (minus what the loaded model already
took), on CUDA torch's peak allocation. Timings come from the stream the user
sees: prefill = time to the first token, decode = tokens per second after it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch

VARIANTS = {
    "unsteered": {"attn_implementation": "sdpa", "steer": False},
    "steered": {"attn_implementation": "sdpa", "steer": True},
    "dense_mask": {"attn_implementation": "dense_sdpa", "steer": True},
}
"""dense_mask: the reference repository's approach, a (batch, heads, q, k) mask per layer."""

PASSAGE = (
    "The archive of the northern harbour lists every ship that docked there, its cargo, the weather on "
    "the day it arrived and the name of the clerk who signed the ledger. "
)


@dataclass(frozen=True)
class SpeedResult:
    variant: str
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_tokens_per_s: float
    peak_memory_mb: float
    """Peak memory above the loaded model: resident set on CPU (with allocator caching off), allocated on CUDA."""


def measure(
    source: str,
    variant: str,
    prompt_tokens: int,
    new_tokens: int,
    device: str | None,
    heads: str | None = None,
    repeats: int = 2,
) -> SpeedResult:
    """One measurement, in this process (call it in a fresh one: peaks never go down).

    The memory peak is that of the first run; times are the best of ``repeats`` runs, the usual
    way to keep other load on the machine out of a timing.
    """
    from ..engine import PastaModel

    settings = VARIANTS[variant]
    model = PastaModel.from_pretrained(
        source, device=device, heads=heads, attn_implementation=settings["attn_implementation"]
    )
    prompt, spans = _prompt_of_length(model, prompt_tokens)
    steer = settings["steer"]

    def run(prompt: str, spans: list[tuple[int, int]], tokens: int) -> tuple[float, float]:
        started = time.perf_counter()
        first = None
        for _ in model.stream(prompt, spans=spans, steer=steer, max_new_tokens=tokens, min_new_tokens=tokens):
            first = first or time.perf_counter()
        return first - started, time.perf_counter() - first

    run(*_prompt_of_length(model, 32), 4)  # warm-up: kernels, allocator
    baseline = _memory_mb(model.device, reset=True)
    timings = [run(prompt, spans, new_tokens)]
    peak = _memory_mb(model.device, reset=False) - baseline
    timings += [run(prompt, spans, new_tokens) for _ in range(repeats - 1)]
    prefill = min(t[0] for t in timings)
    decode = min(t[1] for t in timings)
    return SpeedResult(variant, prompt_tokens, new_tokens, prefill, (new_tokens - 1) / decode, peak)


def _prompt_of_length(model, tokens: int) -> tuple[str, list[tuple[int, int]]]:
    """A prompt of exactly ``tokens`` tokens whose first half is emphasized."""
    ids = model.tokenizer(PASSAGE * (tokens // 10 + 1), add_special_tokens=False)["input_ids"]
    text = model.tokenizer.decode(ids[:tokens])
    while len(model.tokenizer(text)["input_ids"]) > tokens:  # decoding may merge tokens differently
        text = text[:-1]
    return text, [(0, len(text) // 2)]


def _memory_mb(device: torch.device, reset: bool) -> float:
    if device.type == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.max_memory_allocated(device) / 2**20 if not reset else torch.cuda.memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_all(
    source: str,
    lengths: list[int],
    new_tokens: int,
    device: str | None = None,
    heads: str | None = None,
    variants: list[str] | None = None,
) -> dict:
    """Every variant at every length, each in a subprocess; returns the report written by ``bench --json``."""
    results = []
    for length in lengths:
        for variant in variants or list(VARIANTS):
            arguments = {"source": source, "variant": variant, "prompt_tokens": length, "new_tokens": new_tokens,
                         "device": device, "heads": heads}
            timed = _run_worker(arguments, os.environ)
            # Memory in a second process whose allocator returns freed tensors at once (slower, so untimed).
            memory = _run_worker({**arguments, "repeats": 1}, _exact_memory_environment())
            results.append({**timed, "peak_memory_mb": memory["peak_memory_mb"]})
            print(_line(results[-1]), file=sys.stderr, flush=True)
    return {
        "model": source,
        "machine": machine(device),
        "command": f"pasta-rag bench --model {source} --lengths {','.join(map(str, lengths))} --new-tokens {new_tokens}",
        "new_tokens": new_tokens,
        "results": results,
        "ratios": ratios(results),
    }


def _run_worker(arguments: dict, environment: Mapping[str, str]) -> dict:
    command = [sys.executable, "-m", "pasta_rag.research.bench", json.dumps(arguments)]
    worker = subprocess.run(command, capture_output=True, text=True, env=dict(environment))
    if worker.returncode:
        raise RuntimeError(
            f"bench worker for {arguments['variant']} at {arguments['prompt_tokens']} tokens failed:\n"
            f"{worker.stderr[-2000:]}"
        )
    return json.loads(worker.stdout.strip().splitlines()[-1])


def _exact_memory_environment() -> dict[str, str]:
    """glibc keeps freed blocks mapped, so peak RSS would depend on allocation order (seen: 523 to
    793 MB for the same run); with tensors mmap-ed and unmapped on free, it follows live memory."""
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def ratios(results: list[dict]) -> dict:
    """steered / unsteered (and dense / unsteered) for decode speed and peak memory, per length."""
    by_key = {(r["variant"], r["prompt_tokens"]): r for r in results}
    table = {}
    for (variant, length), result in by_key.items():
        base = by_key.get(("unsteered", length))
        if variant == "unsteered" or base is None:
            continue
        table[f"{variant}@{length}"] = {
            "decode_speed_ratio": round(result["decode_tokens_per_s"] / base["decode_tokens_per_s"], 3),
            "prefill_time_ratio": round(result["prefill_s"] / base["prefill_s"], 3),
            "peak_memory_ratio": round(max(result["peak_memory_mb"], 1) / max(base["peak_memory_mb"], 1), 3),
        }
    return table


def machine(device: str | None) -> str:
    if device and device.startswith("cuda") or (device is None and torch.cuda.is_available()):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def _line(result: dict) -> str:
    return (
        f"{result['variant']:>10} {result['prompt_tokens']:>5} tokens: prefill {result['prefill_s']:.2f} s, "
        f"decode {result['decode_tokens_per_s']:.1f} tok/s, peak +{result['peak_memory_mb']:.0f} MB"
    )


if __name__ == "__main__":
    print(json.dumps(asdict(measure(**json.loads(sys.argv[1])))))
