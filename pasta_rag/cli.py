"""The ``pasta-rag`` command: ask a question over a context, unsteered and steered side by side; benchmark."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from .errors import PastaError
from .prompts import question_prompt

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

app = typer.Typer(
    help=(
        "Make a local LLM follow the context you give it. PASTA steers a few attention heads toward "
        "emphasized text (a retrieved passage, an instruction) at inference time, with no change to the weights.\n\n"
        "Start with:  pasta-rag ask --context 'The Eiffel Tower is in Rome.' 'Where is the Eiffel Tower?'"
    ),
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)

ModelOption = Annotated[
    str,
    typer.Option(help="'default' (SmolLM2-135M-Instruct), 'gemma3-270m', a .gguf file, a model folder or a hub id."),
]
HeadsOption = Annotated[
    str | None,
    typer.Option(help="Head set JSON file ({'layer': [heads]}), or a set shipped for the model: 'context' "
                 "(retrieved passages) or 'instructions'. Default: 'context'."),
]
SteerGeneratedOption = Annotated[
    bool | None,
    typer.Option("--steer-generated/--no-steer-generated",
                 help="Also push down steered heads' attention to the generated tokens (fewer repeated answers). "
                 "Default: what the head set was chosen with."),
]
GeneratedAlphaOption = Annotated[
    float | None,
    typer.Option(help="With steering of generated tokens: their attention scale in the steered heads (> 0). "
                 "Default: the head set's own, else alpha."),
]


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question to answer from the context.")],
    context: Annotated[str | None, typer.Option(help="The context text (a retrieved passage).")] = None,
    context_file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Read the context from a file.")] = None,
    emphasis: Annotated[
        list[str] | None,
        typer.Option(help="Emphasize this substring of the context instead of all of it (repeatable)."),
    ] = None,
    model: ModelOption = "default",
    heads: HeadsOption = None,
    alpha: Annotated[
        float | None,
        typer.Option(help="Attention scale on non-emphasized tokens (0 < alpha; smaller steers harder). "
                     "Default: the head set's own, else 0.01."),
    ] = None,
    steer_generated: SteerGeneratedOption = None,
    generated_alpha: GeneratedAlphaOption = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Answer QUESTION from a context twice: with the plain model and with the context emphasized."""
    from .emphasis import emphasize
    from .engine import PastaModel

    if (context is None) == (context_file is None):
        raise typer.BadParameter("give the context with exactly one of --context or --context-file")
    text = context if context is not None else context_file.read_text()
    try:
        pasta = PastaModel.from_pretrained(model, heads=heads, alpha=alpha, steer_generated=steer_generated,
                                           generated_alpha=generated_alpha)
        marked = text if emphasis else emphasize(text)
        prompt, prompt_format = question_prompt(marked, question, bool(pasta.tokenizer.chat_template))
        answers = {
            "unsteered": pasta.generate(prompt, steer=False, max_new_tokens=max_new_tokens).text.strip(),
            "steered": pasta.generate(prompt, emphasis=emphasis, max_new_tokens=max_new_tokens).text.strip(),
        }
    except PastaError as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    if as_json:
        console.print_json(json.dumps({"model": pasta.name, "prompt_format": prompt_format, **answers}))
        return
    table = Table(title=f"{pasta.name} ({prompt_format}), alpha={pasta.alpha}", show_lines=True)
    table.add_column("unsteered", ratio=1)
    table.add_column("steered toward the context", ratio=1)
    table.add_row(answers["unsteered"], answers["steered"])
    console.print(table)


@app.command()
def bench(
    model: ModelOption = "default",
    lengths: Annotated[str, typer.Option(help="Prompt lengths in tokens, comma-separated.")] = "256,1024,4096",
    new_tokens: Annotated[
        int, typer.Option(min=2, help="Tokens decoded per run (every variant decodes this many).")
    ] = 128,
    rounds: Annotated[
        int, typer.Option(min=1, help="Rounds per length; each times every variant once, in a changing order.")
    ] = 7,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when present).")] = None,
    heads: HeadsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON report to this file.")] = None,
) -> None:
    """Prefill time, decode tokens/s and peak memory: unsteered, steered, and a dense-mask implementation.

    Variants are interleaved round by round, and steered / unsteered ratios are paired within a
    round; each figure is a median with its spread over the rounds.
    """
    from rich.markup import escape

    from .research.bench import run_all

    report = run_all(model, [int(n) for n in lengths.split(",")], new_tokens, device, heads, rounds=rounds)
    text = json.dumps(report, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    if as_json:
        print(text)
        return
    title = f"{report['model']} on {report['machine']}: median [min, max] of {report['rounds']} rounds"
    table = Table(title=escape(title))
    for column in ("variant", "prompt tokens", "prefill s", "decode tok/s", "peak MB"):
        table.add_column(column, justify="right")
    for r in report["results"]:
        prefill, decode = r["prefill_s"], r["decode_tokens_per_s"]
        table.add_row(r["variant"], str(r["prompt_tokens"]),
                      f"{prefill['median']:.3f} [{prefill['min']:.3f}, {prefill['max']:.3f}]",
                      f"{decode['median']:.2f} [{decode['min']:.2f}, {decode['max']:.2f}]",
                      f"{r['peak_memory_mb']:.0f}")
    console.print(table)

    def cell(ratio: dict) -> str:
        return f"{ratio['median']:.3f} [{ratio['q1']:.3f}, {ratio['q3']:.3f}] ({ratio['min']:.3f}, {ratio['max']:.3f})"

    ratio_table = Table(title=escape("against unsteered, paired within each round: median [q1, q3] (min, max)"))
    for column in ("variant@length", "decode speed", "prefill time", "peak memory"):
        ratio_table.add_column(column, justify="right")
    for key, entry in report["ratios"].items():
        ratio_table.add_row(key, cell(entry["decode_speed_ratio"]), cell(entry["prefill_time_ratio"]),
                            str(entry.get("peak_memory_ratio", "")))
    console.print(ratio_table)


def _read_task_file(path: Path, what: str) -> list:
    """The file's examples; each malformed line is reported with its number and skipped."""
    from .research.evaluation import read_examples

    examples, problems = read_examples(path)
    for problem in problems:
        errors.print(f"[yellow]{path.name}: skipped line {problem.line}:[/yellow] {problem.message}")
    if not examples:
        errors.print(f"[red]error:[/red] {what} file {path} holds no usable example.")
        raise typer.Exit(2)
    return examples


def _read_sets(paths: list[Path], what: str) -> dict[str, list]:
    """One task per file, named by the file's stem (the path when two stems clash)."""
    sets = {}
    for path in paths:
        sets[path.stem if path.stem not in sets else str(path)] = _read_task_file(path, what)
    return sets


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


@app.command("eval")
def evaluate_command(
    data: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="JSON Lines task file (see pasta_rag/evaluation.py).")],
    model: ModelOption = "default",
    heads: HeadsOption = None,
    alpha: Annotated[float | None, typer.Option(help="Alpha for pasta; default: the head set's own, else 0.01.")] = None,
    steer_generated: SteerGeneratedOption = None,
    generated_alpha: GeneratedAlphaOption = None,
    methods: Annotated[
        str | None,
        typer.Option(help="Comma-separated: none, marked, pasta, cad (conflict and instruction tasks); none, marked, "
                     "spotlighting, pasta, pasta_instructions (injection tasks). Default: all that apply."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the results as JSON here, with the model, machine and command.")
    ] = None,
) -> None:
    """Score methods on a task file: es / acc / rep per task kind, asr / utility / rep per attack family for
    injection tasks (malformed lines are reported and skipped).

    Without --heads, --alpha, a steer-generated flag or --generated-alpha, pasta steers instruction tasks with the model's
    shipped 'instructions' set.
    """
    import shlex
    import time

    import torch
    from rich.progress import Progress

    from .engine import PastaModel
    from .research.bench import machine
    from .research.evaluation import check_methods, default_methods, evaluate, report_rows, shipped_heads_by_task

    examples = _read_task_file(data, "task")
    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else default_methods(examples)
    try:
        check_methods(examples, chosen)
        pasta = PastaModel.from_pretrained(model, heads=heads, alpha=alpha, steer_generated=steer_generated,
                                           generated_alpha=generated_alpha)
        started = time.perf_counter()
        with Progress(console=errors) as progress:
            task = progress.add_task("evaluating", total=len(examples) * len(chosen))
            shipped = heads is None and alpha is None and steer_generated is None and generated_alpha is None
            by_task = shipped_heads_by_task(pasta) if shipped else {}
            report = evaluate(pasta, examples, chosen, progress=lambda n: progress.advance(task, n), heads=by_task)
    except PastaError as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    rows = list(report_rows(report))
    columns = [c for c in ("es", "acc", "asr", "utility", "rep") if any(c in metrics for _, _, metrics in rows)]
    table = Table(title=f"{pasta.name} on {data.name}")
    for column in ("method", "task", *columns, "n"):
        table.add_column(column, justify="right")
    for method, task_name, metrics in rows:
        cells = [f"{metrics[c]:.2f}" if c in metrics else "-" for c in columns]
        table.add_row(method, task_name, *cells, str(metrics["n"]))
    console.print(table)
    if out:
        given = {"--heads": heads, "--alpha": alpha, "--generated-alpha": generated_alpha}
        flags = [f"{flag} {shlex.quote(str(value))}" for flag, value in given.items() if value is not None]
        if steer_generated is not None:
            flags.append("--steer-generated" if steer_generated else "--no-steer-generated")
        command = " ".join(["pasta-rag eval --data", shlex.quote(str(data)), "--model", shlex.quote(model), *flags,
                            "--methods", ",".join(chosen), "--out", shlex.quote(str(out))])
        dtype = str(pasta.model.dtype).removeprefix("torch.")
        run = {"model": pasta.name, "data": str(data), "command": command,
               "machine": f"{machine(str(pasta.device))}, {torch.get_num_threads()} threads, {dtype}",
               "seconds": round(time.perf_counter() - started, 1)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**run, "results": report}, indent=2) + "\n")


@app.command()
def profile(
    out: Annotated[Path, typer.Option(help="Where to write the head set JSON (the context set; the instructions "
                                      "set goes next to it as OUT-stem.instructions.json).")],
    model: ModelOption = "default",
    train: Annotated[
        list[Path] | None,
        typer.Option(exists=True, dir_okay=False, help="Your own task's training set (JSON Lines); repeat for each "
                     "task. Default: the tasks that ship with pasta-rag, for both jobs."),
    ] = None,
    dev: Annotated[
        list[Path] | None,
        typer.Option(exists=True, dir_okay=False, help="With --train: a dev set for choosing k and alpha; repeatable."),
    ] = None,
    job: Annotated[
        str | None, typer.Option(help="Profile one of the shipped jobs only: 'context' or 'instructions'.")
    ] = None,
    exact: Annotated[
        bool, typer.Option(help="Score every head exactly (the reference) instead of screening then rescoring.")
    ] = False,
    candidates: Annotated[
        float, typer.Option(help="With screening: rescore exactly the first CANDIDATES x (the largest head set tried) "
                            "heads in screened order (at least 1).")
    ] = 2.0,
    screening: Annotated[
        str, typer.Option(help="What screening's gates scale: 'outputs' (each head's output between unsteered and "
                          "steered alone) or 'bias' (its steering bias; cheaper, cruder).")
    ] = "outputs",
    dev_choice: Annotated[
        str | None, typer.Option(help="How k and alpha are chosen on dev: 'race' (successive halving: each round the "
                                 "better half answers twice the examples, only the last few answer all) or 'full' "
                                 "(every candidate answers every dev example, the reference). Default: race, or "
                                 "full with --exact.")
    ] = None,
    alpha: Annotated[float, typer.Option(help="Alpha while scoring single heads (the paper's 0.01).")] = 0.01,
    ks: Annotated[str | None, typer.Option(help="Top-k sizes to try, comma-separated (default: those keeping 4-24% of heads).")] = None,
    alphas: Annotated[str | None, typer.Option(help="Alphas to try on dev, comma-separated (default: the job's; "
                                               "0.01,0.1 for your own tasks).")] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Progress file; a rerun resumes from it. Default: OUT with .partial.json.")
    ] = None,
    steer_generated: Annotated[
        bool | None, typer.Option("--steer-generated/--no-steer-generated",
                                  help="Choose on dev with generated tokens' keys steered too; the head set records "
                                  "it. Default: the job's (context: yes); no for your own tasks.")
    ] = None,
    generated_exponents: Annotated[
        str | None, typer.Option(help="With --steer-generated: exponents e to try on dev, comma-separated; generated keys "
                                 "are scaled by alpha**e (1: like the prompt), tried at the best --finalists k and "
                                 "alpha. Default: the job's (context: 1,1.5,2,3); 1 for your own tasks.")
    ] = None,
    finalists: Annotated[
        int | None, typer.Option(help="How many of the best (k, alpha), after the first stage, try the other "
                                 "generated exponents (default: 2).")
    ] = None,
) -> None:
    """Find the heads to steer: screen every head, rescore the best exactly, intersect the per-task top-k, pick k on dev.

    With no tasks given, profiles both jobs on the tasks that ship with pasta-rag (context: short and long knowledge
    conflicts; instructions: JSON format and pronoun change), writes both sets, and saves them where
    PastaModel.from_pretrained finds them again for this model.
    """
    from .engine import PastaModel
    from .research.profiling import JOBS, Checkpoint, Job, shipped_tasks
    from .research.profiling.pipeline import Plan

    if bool(train) != bool(dev):
        raise typer.BadParameter("give your own tasks with both --train and --dev, or neither (the shipped tasks)")
    if job is not None and (train or job not in JOBS):
        raise typer.BadParameter(f"--job is one of {', '.join(JOBS)}, for the shipped tasks (not with --train)")
    ks_given = [int(k) for k in _floats(ks)] if ks else None

    def plan_for(defaults: Job | None) -> Plan:
        return Plan(
            alpha=alpha, ks=ks_given, exact=exact, candidates=candidates, screening=screening, dev_choice=dev_choice,
            **({"finalists": finalists} if finalists is not None else {}),
            alphas=_floats(alphas) if alphas else (defaults.alphas if defaults else (0.01, 0.1)),
            steer_generated=steer_generated if steer_generated is not None else bool(defaults and defaults.steer_generated),
            generated_exponents=(_floats(generated_exponents) if generated_exponents else
                                 defaults.generated_exponents if defaults and (steer_generated is not False) else (1.0,)),
        )

    try:
        if train:
            runs = [(None, _read_sets(train, "training"), _read_sets(dev, "dev"), plan_for(None), out)]
        else:
            runs = [(purpose, shipped_tasks("train", spec.train), shipped_tasks("dev", spec.dev), plan_for(spec),
                     out if purpose == "context" else out.with_name(f"{out.stem}.{purpose}{out.suffix}"))
                    for purpose, spec in JOBS.items() if job in (None, purpose)]
        pasta = PastaModel.from_pretrained(model)
        progress_file = Checkpoint.open(checkpoint or out.with_name(out.stem + ".partial.json"), pasta.name, alpha)
        for purpose, tasks, dev_sets, plan, path in runs:
            _profile_one(pasta, purpose, tasks, dev_sets, plan, progress_file, path)
    except PastaError as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


class StageBars:
    """One progress bar per profiling stage; a stage's bar is completed when the next one opens (or the run ends).

    A stage's work is advanced in float shares (a head's share of a layer) that can sum to a hair under its
    total; a bar left short would keep its clock running to the end of the command."""

    def __init__(self, progress: Progress, label: str = "") -> None:
        self.progress, self.label = progress, label
        self.current: tuple[TaskID, float] | None = None
        """The open stage's bar and its total."""

    def open(self, description: str, total: float) -> Callable[[float], None]:
        self.finish()
        bar = self.progress.add_task(self.label + description, total=total)
        self.current = bar, total
        return lambda n: self.progress.advance(bar, n)

    def finish(self) -> None:
        """Complete the open stage's bar: its work is done."""
        if self.current:
            bar, total = self.current
            self.progress.update(bar, completed=total)


def _profile_one(pasta, purpose: str | None, tasks: dict, dev_sets: dict, plan, progress_file, path: Path) -> None:
    """One head set: profiled, written to PATH, and (for a shipped job) saved where the model finds it again."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from . import profiled
    from .research.profiling.pipeline import profile_head_set
    from .research.profiling.racing import answered

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    label = f"{purpose}: " if purpose else ""
    with Progress(*columns, console=errors) as progress:
        stages = StageBars(progress, label)
        head_set, ranked = profile_head_set(pasta, tasks, dev_sets, plan, progress_file, stages.open)
        stages.finish()
    path.parent.mkdir(parents=True, exist_ok=True)
    head_set.save(path)
    table = Table(title=f"{pasta.name}{' ' + purpose if purpose else ''}: candidates on dev (best first)")
    for column in ("k", "alpha", "generated exponent", "heads", "mean acc - rep", *dev_sets):
        table.add_column(column, justify="right")
    table.add_column("dev answers", justify="right")
    for c in ranked:
        cells = [f"{c.dev[name]['acc']:.2f}/{c.dev[name]['rep']:.2f}" for name in dev_sets]
        table.add_row(str(c.k), str(c.alpha), str(c.generated_exponent), str(len(c.heads)), f"{c.objective:.3f}",
                      *cells, str(answered(c)))
    console.print(table)
    metadata = head_set.metadata
    if "rescored_heads" in metadata:
        console.print(f"screened all {metadata['of_heads']} heads, rescored {metadata['rescored_heads']} exactly")
    else:
        console.print(f"scored all {metadata['of_heads']} heads exactly")
    console.print(f"wrote {len(head_set)} heads (k={ranked[0].k}, alpha={ranked[0].alpha}) to {path}")
    if purpose and pasta.identity:
        saved = profiled.save(pasta.identity, purpose, head_set)
        console.print(f"saved as this model's {purpose!r} set ({saved}): PastaModel.from_pretrained finds it")


@app.command()
def serve(
    model: ModelOption = "default",
    heads: HeadsOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on; 127.0.0.1 keeps the server to this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port to listen on.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="PASTA_RAG_API_KEY",
                     help="Require 'Authorization: Bearer KEY' on /v1 (the OpenAI client's api_key). "
                     "Set it whenever --host is not a loopback address."),
    ] = None,
    batch_window_ms: Annotated[
        float, typer.Option(min=0, help="How long the first waiting request waits for others to batch with.")
    ] = 10.0,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Most requests answered by one batched call.")] = 16,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Largest request body accepted (413 above).")] = 4 << 20,
    replicas: Annotated[
        int | None,
        typer.Option(min=1, help="Run this many replicas on Ray Serve behind its HTTP proxy (the 'ray' extra); "
                     "1 without --ray-address is the plain server."),
    ] = None,
    gpus_per_replica: Annotated[
        float | None, typer.Option(help="With --replicas: GPUs each replica takes (1: one replica per GPU).")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Join this Ray cluster ('auto', or HOST:PORT of `ray start --head`).")
    ] = None,
) -> None:
    """Serve the steered model with the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models)."""
    if gpus_per_replica is not None and replicas is None:
        raise typer.BadParameter("it sets the GPUs of each Ray Serve replica: give --replicas N too.",
                                 param_hint="--gpus-per-replica")
    if gpus_per_replica is not None and gpus_per_replica <= 0:
        raise typer.BadParameter(f"{gpus_per_replica} is not a number of GPUs above 0; leave it out for CPU "
                                 "replicas.", param_hint="--gpus-per-replica")
    if (replicas or 1) > 1 or ray_address is not None:
        _serve_on_ray(model, heads, host, port, api_key, batch_window_ms, max_batch_size, max_body_bytes,
                      replicas or 1, gpus_per_replica or 0, ray_address)
        return
    try:
        import uvicorn

        from .server import create_app
    except ImportError as error:
        errors.print(f"[red]error:[/red] the server needs FastAPI and uvicorn ({error.name} is missing): "
                     "pip install 'pasta-rag[serve]'")
        raise typer.Exit(2) from None
    from .engine import PastaModel

    try:
        pasta = PastaModel.from_pretrained(model, heads=heads)
    except PastaError as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    server_app = create_app(pasta, aliases=[model], api_key=api_key, batch_window_ms=batch_window_ms,
                            max_batch_size=max_batch_size, max_body_bytes=max_body_bytes)
    errors.print(f"Serving {pasta.name} (also as {model!r}) on http://{host}:{port}/v1"
                 f"{'' if api_key else ' without an API key'}.")
    uvicorn.run(server_app, host=host, port=port)


def _serve_on_ray(model: str, heads: str | None, host: str, port: int, api_key: str | None, batch_window_ms: float,
                  max_batch_size: int, max_body_bytes: int, replicas: int, gpus_per_replica: float,
                  ray_address: str | None) -> None:
    """``serve --replicas``: the same app on Ray Serve; each replica loads the model itself."""
    try:
        from .server import ray_serve
    except ImportError as error:
        errors.print(f"[red]error:[/red] --replicas and --ray-address need Ray Serve ({error.name} is missing): "
                     "pip install 'pasta-rag[serve,ray]'")
        raise typer.Exit(2) from None
    args = ray_serve.ServeArgs(model=model, heads=heads, api_key=api_key, replicas=replicas,
                               gpus_per_replica=gpus_per_replica, batch_window_ms=batch_window_ms,
                               max_batch_size=max_batch_size, max_body_bytes=max_body_bytes)
    errors.print(f"Serving {model!r} as {replicas} Ray Serve replica(s) "
                 f"({f'{gpus_per_replica:g} GPU' if gpus_per_replica else '1 CPU'} each) on http://{host}:{port}/v1"
                 f"{'' if api_key else ' without an API key'}.")
    ray_serve.run(args, host=host, port=port, ray_address=ray_address)


if __name__ == "__main__":
    app()
