"""`pasta-rag serve` under load: what batching concurrent requests buys, what the HTTP layer costs, and how soon
a streamed answer starts.

Runs the server (uvicorn in a thread, the same app `pasta-rag serve` runs) on a loopback port and drives it
with plain HTTP clients, on held-out conflict questions with the passage emphasized:
- a few requests one after another, then N at once (they share batched calls): requests/s of each,
  and the same N prompts as one in-process ``generate_batch`` call (what batching can reach);
- one request through the server against the same `PastaModel.generate` call in-process;
- time to the first streamed token against the whole answer.
Every measurement is taken once per round, so that each round's figures share one machine load; the
report gives each round and the medians.

    python benchmarks/serve_load.py --model default --out benchmarks/results/serve_load_smollm2.json

``--soak-s S`` runs the soak instead: ``--clients`` clients send requests without pause for S seconds,
alternately streamed and not, each answer checked against the same request made alone (greedy,
in-process, before the soak); errors and wrong answers are counted, and the process's resident memory
is sampled, to see it flat after the warm-up.

    python benchmarks/serve_load.py --model default --soak-s 120 --clients 32 \
        --out benchmarks/results/serve_soak_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import httpx
import torch
import uvicorn

from pasta_rag import PastaModel, emphasize
from pasta_rag.research.bench import machine
from pasta_rag.server import create_app

T = TypeVar("T")
DATA = Path(__file__).parent / "data" / "test" / "conflicts.jsonl"


def requests_of(count: int) -> list[list[dict]]:
    records = [json.loads(line) for line in DATA.read_text().splitlines()[:count]]
    return [[{"role": "user", "content": f"Context: {emphasize(r['context'])}\nQuestion: {r['question']}"}]
            for r in records]


def serve(app) -> tuple[uvicorn.Server, str]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{listener.getsockname()[1]}"


def timed(work: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """The result, wall seconds and this process's CPU seconds (all threads): on a shared machine the CPU
    seconds are the figure other work disturbs least."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, {"seconds": round(time.perf_counter() - wall, 3), "cpu_seconds": round(time.process_time() - cpu, 3)}


def _has_text(chunk: dict) -> bool:
    return bool(chunk["choices"]) and bool(chunk["choices"][0]["delta"].get("content"))


def rss_mib() -> float:
    """This process's resident memory (Linux ``/proc``), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def soak(args: argparse.Namespace, model: PastaModel, app, url: str) -> dict:
    """``args.clients`` clients for ``args.soak_s`` seconds; every answer against the request made alone."""
    conversations = requests_of(args.soak_prompts)
    expected = [model.generate(m, max_new_tokens=args.max_tokens).text for m in conversations]
    deadline = time.perf_counter() + args.soak_s
    counts = {"requests": 0, "streamed": 0, "errors": 0, "wrong_answers": 0}
    failures: list[str] = []
    lock = threading.Lock()
    samples: list[tuple[float, float]] = []
    soak_started = time.perf_counter()

    def sample() -> None:
        while time.perf_counter() < deadline:
            samples.append((round(time.perf_counter() - soak_started, 1), round(rss_mib(), 1)))
            time.sleep(args.soak_s / 60)

    def answer_of(http: httpx.Client, index: int, stream: bool) -> str:
        body = {"model": args.model, "messages": conversations[index], "max_tokens": args.max_tokens, "stream": stream}
        if not stream:
            response = http.post("/chat/completions", json=body)
            response.raise_for_status()
            return response.json()["choices"][0]["message"]["content"]
        text = []
        with http.stream("POST", "/chat/completions", json=body) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise RuntimeError(chunk["error"]["message"])
                    if _has_text(chunk):
                        text.append(chunk["choices"][0]["delta"]["content"])
        return "".join(text)

    def client(number: int) -> None:
        with httpx.Client(base_url=f"{url}/v1", timeout=600) as http:
            turn = number
            while time.perf_counter() < deadline:
                index, stream = turn % len(conversations), turn % 2 == 1
                turn += args.clients
                try:
                    ok = answer_of(http, index, stream) == expected[index]
                    error = None
                except Exception as failure:  # counted and reported: the soak wants zero
                    ok, error = False, repr(failure)
                with lock:
                    counts["requests"] += 1
                    counts["streamed"] += stream
                    counts["errors"] += error is not None
                    counts["wrong_answers"] += error is None and not ok
                    if not ok and len(failures) < 10:
                        failures.append(error or f"request {index} (streamed={stream}): wrong answer")

    app.state.batcher.batch_sizes.clear()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(client, range(args.clients)))
    seconds = time.perf_counter() - soak_started
    sampler.join()
    warm = [rss for at, rss in samples if at >= args.soak_s / 4]  # after the warm-up: first batches, first streams
    sizes = app.state.batcher.batch_sizes
    return {
        **counts,
        "seconds": round(seconds, 1),
        "requests_per_s": round(counts["requests"] / seconds, 3),
        "distinct_prompts": len(conversations),
        "batched_calls": len(sizes),
        "mean_batch_size": round(statistics.mean(sizes), 2) if sizes else 0,
        "rss_mib": {"after_warm_up": warm[0], "end": warm[-1], "max_after_warm_up": max(warm),
                    "growth_after_warm_up": round(warm[-1] - warm[0], 1)},
        "rss_samples_s_mib": samples,
        "failures": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent requests.")
    parser.add_argument("--sequential", type=int, default=4,
                        help="Of those, how many to send one after another for the sequential rate (it is a rate: "
                        "a few requests measure it, and all of them would take most of the run).")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="Rounds; each takes every measurement once.")
    parser.add_argument("--budget-s", type=float, default=170.0,
                        help="Start no round that would end after this many seconds of the run (the first one always runs).")
    parser.add_argument("--batch-window-ms", type=float, default=50.0)
    parser.add_argument("--soak-s", type=float, help="Run the soak for this many seconds instead (see above).")
    parser.add_argument("--soak-prompts", type=int, default=8, help="Distinct requests the soak's clients cycle through.")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    model = PastaModel.from_pretrained(args.model)
    app = create_app(model, aliases=[args.model], batch_window_ms=args.batch_window_ms, max_batch_size=args.clients)
    server, url = serve(app)
    if args.soak_s:
        report = {"command": shlex.join(["python", *sys.argv]),
                  "machine": f"{machine(str(model.device))}, {torch.get_num_threads()} threads, float32",
                  "model": model.name, "clients": args.clients, "max_tokens": args.max_tokens,
                  "batch_window_ms": args.batch_window_ms, "soak": soak(args, model, app, url),
                  "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
                  "note": "the machine is shared: a load average above its core count means other work ran too"}
        server.should_exit = True
        _write(report, args.out)
        return
    http = httpx.Client(base_url=f"{url}/v1", timeout=600)
    conversations = requests_of(args.clients)

    def body(messages: list[dict], **extra) -> dict:
        return {"model": args.model, "messages": messages, "max_tokens": args.max_tokens, **extra}

    def ask(messages: list[dict]) -> dict:
        response = http.post("/chat/completions", json=body(messages))
        response.raise_for_status()
        return response.json()

    def streamed() -> tuple[float, float]:
        """Seconds to the first text chunk, and to the end of the answer."""
        t, first = time.perf_counter(), math.nan
        with http.stream("POST", "/chat/completions", json=body(conversations[0], stream=True)) as response:
            for line in response.iter_lines():
                if math.isnan(first) and line.startswith("data: {") and _has_text(json.loads(line[6:])):
                    first = time.perf_counter() - t
        return first, time.perf_counter() - t

    ask(conversations[0])  # warm-up: first-call costs are not the server's
    rounds: list[dict] = []
    same = 0
    while len(rounds) < args.rounds:  # every measurement once per round: each round sees one machine load
        round_started = time.perf_counter()
        sequential, sequential_t = timed(lambda: [ask(m) for m in conversations[: args.sequential]])
        app.state.batcher.batch_sizes.clear()
        with ThreadPoolExecutor(args.clients) as pool:
            concurrent, concurrent_t = timed(lambda: list(pool.map(ask, conversations)))
        batch_sizes = list(app.state.batcher.batch_sizes)
        _, batch_t = timed(lambda: model.generate_batch(conversations, max_new_tokens=args.max_tokens))
        _, served_t = timed(lambda: ask(conversations[0]))
        _, in_process_t = timed(lambda: model.generate(conversations[0], max_new_tokens=args.max_tokens))
        first_token_s, whole_s = streamed()
        same += sum(a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
                    for a, b in zip(sequential, concurrent))
        sequential_rate = args.sequential / sequential_t["seconds"]
        rounds.append({
            "sequential": {**sequential_t, "requests_per_s": round(sequential_rate, 3)},
            "concurrent": {**concurrent_t, "requests_per_s": round(args.clients / concurrent_t["seconds"], 3),
                           "batch_sizes": batch_sizes},
            "throughput_ratio": round(args.clients / concurrent_t["seconds"] / sequential_rate, 2),
            "cpu_ratio": round(args.clients / concurrent_t["cpu_seconds"]
                               / (args.sequential / sequential_t["cpu_seconds"]), 2),
            "in_process_generate_batch": batch_t,
            "single_request": {"server_s": served_t["seconds"], "in_process_s": in_process_t["seconds"],
                               "overhead_s": round(served_t["seconds"] - in_process_t["seconds"], 3)},
            "streaming": {"first_token_s": round(first_token_s, 3), "whole_answer_s": round(whole_s, 3)},
        })
        spent = time.perf_counter() - started
        if spent + (time.perf_counter() - round_started) > args.budget_s:
            break
    server.should_exit = True

    def median(*path: str) -> float:
        values = []
        for r in rounds:
            value = r
            for key in path:
                value = value[key]
            values.append(value)
        return round(statistics.median(values), 3)

    report = {
        "command": shlex.join(["python", *sys.argv]),
        "machine": f"{machine(str(model.device))}, {torch.get_num_threads()} threads, float32",
        "model": model.name,
        "clients": args.clients,
        "sequential_requests": args.sequential,
        "max_tokens": args.max_tokens,
        "batch_window_ms": args.batch_window_ms,
        "medians": {
            "throughput_ratio": median("throughput_ratio"),
            "cpu_ratio": median("cpu_ratio"),
            "sequential_requests_per_s": median("sequential", "requests_per_s"),
            "concurrent_requests_per_s": median("concurrent", "requests_per_s"),
            "concurrent_s": median("concurrent", "seconds"),
            "in_process_generate_batch_s": median("in_process_generate_batch", "seconds"),
            "single_request_server_s": median("single_request", "server_s"),
            "single_request_in_process_s": median("single_request", "in_process_s"),
            "single_request_overhead_s": median("single_request", "overhead_s"),
            "streaming_first_token_s": median("streaming", "first_token_s"),
            "streaming_whole_answer_s": median("streaming", "whole_answer_s"),
        },
        "same_answers_sequential_and_batched": f"{same}/{args.sequential * len(rounds)}",
        "rounds": rounds,
        "seconds": round(time.perf_counter() - started, 1),
        "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "note": "the machine is shared: a load average above its core count means other work ran too",
    }
    _write(report, args.out)


def _write(report: dict, out: Path | None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
