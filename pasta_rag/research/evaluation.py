"""Evaluation: task files, prompts, metrics and the runner behind ``pasta-rag eval``.

The harness owns the prompt, so that methods differ only in how the emphasized
text is treated: ``none`` (plain model), ``marked`` (the paper's baseline: the
text wrapped in asterisks, no steering), ``pasta`` (steered toward it) and
``cad`` (context-aware decoding: contrasted with the prompt without it).
Injection tasks (a document carrying an attacker's instruction) have their own
prompts, metrics and methods: see ``injection``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..emphasis import emphasize
from ..engine import HeadSetLike, PastaModel
from ..errors import PastaError
from ..prompts import PLAIN_FORMAT, PLAIN_NEXT_TURN, Prompt
from ..settings import UNSET, Steering
from . import injection
from .cad import generate_cad, score_cad
from .injection import INJECTION, InjectionScore

METHODS = ("none", "marked", "pasta", "cad", "spotlighting", "pasta_instructions", "pasta_facts", "pasta_facts_pinned")
TASKS = ("knowledge_conflict", "instruction", INJECTION)
UNSTEERED = Steering(enabled=False)
TASK_METHODS = {"knowledge_conflict": METHODS[:4], "instruction": METHODS[:4], INJECTION: injection.METHODS}
CHECK_KINDS = ("json_keys", "absent_words", "contains")
NEW_TOKENS = {"knowledge_conflict": 24, "instruction": 96, INJECTION: injection.NEW_TOKENS}
REQUIRED = {
    "knowledge_conflict": ["target_new", "target_true"],
    "instruction": ["instruction", "check"],
    INJECTION: ["system", "expected", "payload", "family"],
}


@dataclass(frozen=True)
class Example:
    id: str
    task: str
    context: str
    question: str
    target_new: str | None = None
    target_true: str | None = None
    system: str | None = None
    instruction: str | None = None
    check: dict[str, Any] | None = None
    emphasis: list[str] | None = None
    answer: str | None = None
    """Instruction examples may give an answer that obeys and one that violates: the profiler contrasts them.
    A conflict's answer is the complete sentence that follows the context: its stop row scores ending the turn there."""
    violation: str | None = None
    family: str | None = None
    """Injection: the attack family, reported on its own."""
    position: str | None = None
    expected: str | None = None
    """Injection: the document's fact, the answer to give."""
    payload: str | None = None
    """Injection: what the attacker wants the answer to carry."""
    attack: str | None = None
    """Injection: the attacker's text, as inserted in the context."""

    @property
    def emphasized(self) -> list[str]:
        """What the task emphasizes: the given substrings, else the context (conflicts, injection) or the instruction."""
        if self.emphasis:
            return list(self.emphasis)
        return [self.instruction or "" if self.task == "instruction" else self.context]


def passages(example: Example, control: bool = False) -> list[str]:
    """A long-context record's passages, one per document of a vector store; for the control, the
    contradicting fact is replaced by the true one (the documents agree with the model's memory)."""
    context = example.context.replace(example.target_new, example.target_true) if control else example.context
    return [p.strip() for p in context.split("\n\n") if p.strip()]


@dataclass(frozen=True)
class Problem:
    line: int
    message: str


def parse_example(data: Any) -> Example:
    """One task record, checked; the error says which field is wrong."""
    if not isinstance(data, dict):
        raise PastaError("a line must hold a JSON object")
    task = data.get("task")
    if task not in TASKS:
        raise PastaError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    required = ["id", "context", "question", *REQUIRED[task]]
    missing = [name for name in required if data.get(name) in (None, "")]
    if missing:
        raise PastaError(f"{task} example lacks {', '.join(missing)}")
    fields = {name: data.get(name) for name in Example.__dataclass_fields__}
    fields["id"] = str(fields["id"])
    if task == "instruction":
        check = data["check"]
        if not isinstance(check, dict) or check.get("kind") not in CHECK_KINDS:
            raise PastaError(f"check.kind must be one of {', '.join(CHECK_KINDS)}")
    emphasis = data.get("emphasis")
    if emphasis is not None and not (isinstance(emphasis, list) and all(isinstance(e, str) and e for e in emphasis)):
        raise PastaError("emphasis must be a list of non-empty strings")
    example = Example(**fields)
    if task == INJECTION:
        injection.check_record(example)
    container = f"{example.instruction}\n{example.context}" if task == "instruction" else example.context
    absent = [e for e in example.emphasized if e not in container]
    if absent:
        raise PastaError(f"emphasis {absent!r} does not occur in the example's text")
    return example


def read_examples(path: str | Path) -> tuple[list[Example], list[Problem]]:
    """Every well-formed example of a JSON Lines file, and a problem (with its line number) for each other line."""
    examples: list[Example] = []
    problems: list[Problem] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            examples.append(parse_example(json.loads(line)))
        except json.JSONDecodeError as error:
            problems.append(Problem(number, f"not valid JSON ({error.msg})"))
        except (PastaError, TypeError) as error:
            problems.append(Problem(number, str(error)))
    return examples, problems


# --- metrics --------------------------------------------------------------------------------


def loops(answer: str) -> bool:
    """A degenerate answer: some word 4-gram occurs three or more times."""
    words = re.findall(r"\w+", answer.lower())
    grams = Counter(tuple(words[i : i + 4]) for i in range(len(words) - 3))
    return bool(grams) and max(grams.values()) >= 3


def follows_context(answer: str, target_new: str, target_true: str) -> bool:
    """The answer names the context's fact and not the remembered one (case-insensitive)."""
    text = answer.lower()
    return target_new.lower() in text and target_true.lower() not in text


def obeys(answer: str, check: dict[str, Any]) -> bool:
    kind = check["kind"]
    if kind == "json_keys":
        found = first_json_object(answer)
        return found is not None and all(key in found for key in check.get("keys", []))
    if kind == "absent_words":
        return not any(re.search(rf"\b{re.escape(word)}\b", answer, re.IGNORECASE) for word in check.get("words", []))
    if kind == "contains":
        return check.get("text", "") in answer
    raise PastaError(f"unknown check kind {kind!r}")


def first_json_object(text: str) -> dict | None:
    """The first parseable JSON object in ``text`` (answers often wrap it in prose or code fences)."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


# --- prompts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompted:
    messages: list[dict[str, str]]
    steering: Steering
    """What the method steers with; a field it sets wins over the runner's head set for the task
    (pasta_instructions steers with the instructions set whatever the task's set is)."""

    def steering_with(self, heads: HeadSetLike | None) -> Steering:
        """The method's steering, with the task's head set where the method leaves the heads unset."""
        if heads is None or self.steering.heads is not UNSET:
            return self.steering
        return self.steering.override(heads=heads)


def check_methods(examples: Iterable[Example], methods: Iterable[str]) -> None:
    """Refuse, before any generation, a method that does not apply to a task kind of ``examples``."""
    tasks = {example.task for example in examples}
    for method in methods:
        if method not in METHODS:
            raise PastaError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        for task in sorted(tasks):
            if method == "cad" and task == INJECTION:
                raise PastaError("cad does not apply to injection tasks: it contrasts the answer with and without the "
                                 f"document, which holds the attack too; choose from {', '.join(injection.METHODS)}")
            if method not in TASK_METHODS[task]:
                raise PastaError(f"method {method!r} does not apply to {task} tasks; choose from "
                                 f"{', '.join(TASK_METHODS[task])}")


def default_methods(examples: Iterable[Example]) -> list[str]:
    """Every method that applies to every task kind of ``examples``."""
    tasks = {example.task for example in examples}
    return [m for m in METHODS if all(m in TASK_METHODS[task] for task in tasks)]


def prompt_without_emphasis(example: Example) -> list[dict[str, str]]:
    """CAD's contrast: the same prompt with the emphasized text left out."""
    messages = prompt_for(example, "none").messages
    content = messages[-1]["content"]
    for target in example.emphasized:
        content = content.replace(target, "")
    return [*messages[:-1], {"role": "user", "content": content}]


def prompt_for(example: Example, method: str) -> Prompted:
    """The chat messages of ``example`` under ``method``: one user message, context then question."""
    if method not in METHODS:
        raise PastaError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if example.task == INJECTION:
        return Prompted(injection.messages_for(example, method), injection.STEERING.get(method, UNSTEERED))
    check_methods([example], [method])
    mark: Callable[[str], str] = {
        "none": lambda s: s, "cad": lambda s: s, "marked": lambda s: f"*{s}*", "pasta": emphasize
    }[method]

    def marked(text: str) -> str:
        for target in example.emphasized:
            text = text.replace(target, mark(target))
        return text

    if example.task == "knowledge_conflict":
        content = f"Context: {marked(example.context)}\nQuestion: {example.question}"
    else:
        content = f"{marked(example.instruction)}\n\nContext: {marked(example.context)}\nQuestion: {example.question}"
    messages = [{"role": "system", "content": example.system}] if example.system else []
    return Prompted([*messages, {"role": "user", "content": content}], Steering() if method == "pasta" else UNSTEERED)


# --- the runner -----------------------------------------------------------------------------


@dataclass
class TaskScore:
    n: int = 0
    es_hits: int = 0
    acc_hits: int = 0
    rep_hits: int = 0
    scored_es: bool = True

    def metrics(self, task: str) -> dict[str, float | int]:
        result: dict[str, float | int] = {"acc": self.acc_hits / self.n, "rep": self.rep_hits / self.n, "n": self.n}
        if task == "knowledge_conflict" and self.scored_es:
            result = {"es": self.es_hits / self.n, **result}
        return result


def evaluate(
    model: PastaModel,
    examples: Sequence[Example],
    methods: Iterable[str] | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    es: bool = True,
    heads: Mapping[str, HeadSetLike] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{method: {task: metrics}}`` over ``examples``; ``methods`` defaults to those that apply to every task kind.

    Metrics: ``{"es", "acc", "rep", "n"}`` (es for knowledge conflicts only); for injection tasks
    ``{"asr", "utility", "rep", "n", "families": {family: {"asr", "utility", "rep", "n"}}}``.
    ``es=False`` skips the efficacy score (two extra forwards per conflict), as choosing heads on dev does.
    ``heads`` steers a task kind with another head set than the model's, e.g. ``shipped_heads_by_task``.
    """
    methods = default_methods(examples) if methods is None else list(methods)
    check_methods(examples, methods)
    report: dict[str, dict[str, dict[str, Any]]] = {}
    for method in methods:
        scores: dict[str, TaskScore | InjectionScore] = {}
        for task in TASKS:
            batch = [e for e in examples if e.task == task]
            for start in range(0, len(batch), batch_size):
                chunk = batch[start : start + batch_size]
                score = scores.setdefault(task, InjectionScore() if task == INJECTION else TaskScore(scored_es=es))
                _score_chunk(model, chunk, method, score, (heads or {}).get(task))
                if progress:
                    progress(len(chunk))
        report[method] = {task: score.metrics(task) for task, score in scores.items()}
    return report


def shipped_heads_by_task(model: PastaModel) -> dict[str, HeadSetLike]:
    """Instruction tasks steered with the model's own ``instructions`` set (profiled or shipped), when it has one."""
    return {"instruction": "instructions"} if model.own_head_set("instructions") is not None else {}


def report_rows(report: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """``(method, task, metrics)`` for each entry of an ``evaluate`` report, then ``(method, "task: family", ...)``
    for each family of a task that reports families."""
    for method, tasks in report.items():
        for task, metrics in tasks.items():
            yield method, task, metrics
            for family, by_family in metrics.get("families", {}).items():
                yield method, f"{task}: {family}", by_family


def _score_chunk(
    model: PastaModel, chunk: Sequence[Example], method: str, score: TaskScore | InjectionScore,
    heads: HeadSetLike | None,
) -> None:
    prompts = [prompt_for(example, method) for example in chunk]
    steering = prompts[0].steering_with(heads)
    new_tokens, stop = NEW_TOKENS[chunk[0].task], stop_strings(model, prompts[0].messages)
    if method == "cad":
        plain = [prompt_without_emphasis(example) for example in chunk]
        answers = generate_cad(model, [p.messages for p in prompts], plain, max_new_tokens=new_tokens, stop=stop)
    else:
        answers = model.generate_batch([p.messages for p in prompts], steering=steering,
                                       max_new_tokens=new_tokens, stop=stop)
    if isinstance(score, InjectionScore):
        for example, generation in zip(chunk, answers):
            score.add(example, generation.text, loops(generation.text))
        return
    for example, prompted, generation in zip(chunk, prompts, answers):
        acc, rep = answer_hits(example, generation.text)
        score.n += 1
        score.acc_hits += acc
        score.rep_hits += rep
        if example.task == "knowledge_conflict":
            if not score.scored_es:
                continue
            if method == "cad":
                without = prompt_without_emphasis(example)
                new = score_cad(model, prompted.messages, without, example.target_new)
                true = score_cad(model, prompted.messages, without, example.target_true)
            else:
                new = model.score(prompted.messages, example.target_new, steering=steering)
                true = model.score(prompted.messages, example.target_true, steering=steering)
            score.es_hits += new > true


def stop_strings(model: PastaModel, messages: Prompt) -> list[str] | None:
    """Where an answer ends besides end-of-sequence: a base model answering in the plain format would go on
    to write the next turn itself."""
    return [PLAIN_NEXT_TURN] if model.render(messages).format == PLAIN_FORMAT else None


def answer_hits(example: Example, answer: str) -> tuple[bool, bool]:
    """(acc, rep) of one answer to a knowledge-conflict or instruction example: it follows the context (or
    obeys the instruction), and it loops."""
    if example.task == "knowledge_conflict":
        acc = follows_context(answer, example.target_new or "", example.target_true or "")
    else:
        acc = obeys(answer, example.check)
    return acc, loops(answer)
