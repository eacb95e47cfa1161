"""What constrained decoding costs and what it buys, on the default model.

1. Libraries: compile time and token-mask time per token of llguidance (the one pasta_rag.grammar uses)
   and xgrammar, on the same tool-call schema and the same token sequence (no model involved).
2. Decode speed in one run: unconstrained vs constrained (response_format json_schema) decode tokens/s,
   interleaved rounds, prefill timed apart and subtracted; and the grammar's own time per token.
3. Forced tool calls (tool_choice="required", four tools) and structured output (three schemas) over
   mixed prompts: the share whose output parses and validates against the schema. Batched; stops early
   past --budget seconds and says how many prompts it ran.

    python benchmarks/grammar_overhead.py --out benchmarks/results/grammar_overhead_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from pasta_rag import PastaModel
from pasta_rag import grammar as grammar_module
from pasta_rag.research.bench import machine
from pasta_rag.tools import closed_schema, schema_error, tool_use

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                    "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers.",
     "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"]}}},
    {"type": "function", "function": {"name": "search_web", "description": "Search the web for a query.",
     "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}},
    {"type": "function", "function": {"name": "send_email", "description": "Send an email.",
     "parameters": {"type": "object", "properties": {"to": {"type": "string"}, "subject": {"type": "string"}},
                    "required": ["to", "subject"]}}},
]
CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Quito", "Delhi"]
TOOL_PROMPTS = (
    [f"What's the weather in {c}?" for c in CITIES]
    + [f"What is {a} plus {b}?" for a, b in [(3, 4), (12, 30), (7, 8), (100, 250), (5, 9), (21, 21)]]
    + [f"Search the web for {q}." for q in ["the tallest building", "cheap flights to Rome", "python tutorials",
                                             "the news today", "pasta recipes", "how tides work"]]
    + [f"Email {p} about {s}." for p, s in [("ann@example.com", "the meeting"), ("bob@example.com", "lunch"),
                                            ("eve@example.com", "the report"), ("joe@example.com", "holidays"),
                                            ("kim@example.com", "the invoice"), ("lee@example.com", "the party")]]
)
SCHEMAS = {
    "person": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
               "required": ["name", "age"]},
    "city": {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"},
                                              "capital": {"type": "boolean"}}, "required": ["city", "country", "capital"]},
    "sentiment": {"type": "object", "properties": {"label": {"enum": ["positive", "negative", "neutral"]},
                                                   "confidence": {"type": "number"}}, "required": ["label", "confidence"]},
}
STRUCTURED_PROMPTS = (
    [("person", f"{n} is {a} years old. Give the person as JSON.")
     for n, a in [("Ann", 31), ("Bob", 45), ("Chen", 22), ("Dina", 67), ("Emil", 19), ("Fay", 38), ("Gus", 54),
                  ("Hana", 27), ("Ivo", 73)]]
    + [("city", f"Describe {c} as JSON: the city, its country and whether it is the capital.")
       for c in ["Paris", "Lyon", "Tokyo", "Osaka", "Lima", "Cusco", "Oslo", "Bergen"]]
    + [("sentiment", f"Classify the sentiment of: '{t}'")
       for t in ["I love it", "This is awful", "It is fine", "Best day ever", "I want a refund", "Meh",
                 "Absolutely wonderful", "Never again"]]
)


def library_masks(model: PastaModel) -> dict:
    """Compile and per-token mask times of llguidance and xgrammar on one forced-call grammar."""
    use = tool_use(TOOLS, "required")
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}</tool_call>'
    tokens = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    vocab = model.model.config.vocab_size
    results = {"tokens": len(tokens)}

    import llguidance

    started = time.perf_counter()
    checker = grammar_module.grammar_tokenizer(model.model, model.tokenizer)
    results["llguidance_tokenizer_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    grammar = grammar_module.compiled(grammar_module.tool_call_grammar(use), checker, "bench")
    llguidance.LLMatcher(checker, grammar)
    results["llguidance_compile_s"] = round(time.perf_counter() - started, 4)
    for run in ("first", "warm"):  # the first pass fills the lexer's caches
        matcher = llguidance.LLMatcher(checker, grammar)
        started = time.perf_counter()
        for token in tokens:
            grammar_module._unpack(matcher.compute_bitmask(), vocab)  # the mask as GrammarProcessor uses it
            assert matcher.consume_token(token), matcher.get_error()
        results[f"llguidance_mask_ms_per_token_{run}"] = round(1000 * (time.perf_counter() - started) / len(tokens), 3)

    try:
        import xgrammar as xgr
    except ImportError:
        results["xgrammar"] = "not installed"
        return results
    started = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(model.tokenizer, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info)
    results["xgrammar_tokenizer_s"] = round(time.perf_counter() - started, 3)
    schema = {"type": "object", "properties": {"name": {"const": "get_weather"},
                                               "arguments": TOOLS[0]["function"]["parameters"]},
              "required": ["name", "arguments"], "additionalProperties": False}
    started = time.perf_counter()
    compiled = compiler.compile_grammar(
        xgr.Grammar.concat(xgr.Grammar.from_ebnf('root ::= "<tool_call>"'),
                           xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False),
                           xgr.Grammar.from_ebnf('root ::= "</tool_call>"')))
    results["xgrammar_compile_s"] = round(time.perf_counter() - started, 4)
    bitmask = xgr.allocate_token_bitmask(1, vocab)
    for run in ("first", "warm"):
        xmatcher = xgr.GrammarMatcher(compiled)
        started = time.perf_counter()
        for token in tokens:
            xmatcher.fill_next_token_bitmask(bitmask)
            assert xmatcher.accept_token(token)
        results[f"xgrammar_mask_ms_per_token_{run}"] = round(1000 * (time.perf_counter() - started) / len(tokens), 3)
    results["xgrammar_refuses_unsupported_not"] = _refuses(lambda: xgr.Grammar.from_json_schema(json.dumps(NOT_SCHEMA)))
    results["llguidance_refuses_unsupported_not"] = _refuses(lambda: grammar_module.compiled(
        f"start: %json {json.dumps(NOT_SCHEMA)}", checker, "not"))
    return results


NOT_SCHEMA = {"type": "object", "not": {"required": ["x"]}}
"""A keyword neither library implements: does it say so, or decode as if it were not there?"""


def _refuses(compile_it) -> bool:
    try:
        compile_it()
    except Exception:  # noqa: BLE001 - any refusal counts
        return True
    return False


def decode_speed(model: PastaModel, rounds: int, tokens: int) -> dict:
    """Unconstrained vs constrained decode tokens/s, interleaved; prefill (one token) subtracted."""
    messages = [{"role": "user", "content": "List some facts about Paris as JSON."}]
    long_list = {"type": "json_schema", "json_schema": {"name": "facts", "schema": {
        "type": "object", "properties": {"facts": {"type": "array", "items": {"type": "string"}, "minItems": 50}},
        "required": ["facts"]}}}  # never complete within the budget: every run decodes exactly `tokens`
    timed = {"grammar_s": 0.0, "grammar_calls": 0}
    original = grammar_module.GrammarProcessor.__call__

    def timed_call(self, input_ids, scores):
        started = time.perf_counter()
        try:
            return original(self, input_ids, scores)
        finally:
            timed["grammar_s"] += time.perf_counter() - started
            timed["grammar_calls"] += 1

    grammar_module.GrammarProcessor.__call__ = timed_call
    speeds: dict[str, list[float]] = {"unconstrained": [], "constrained": []}
    try:
        for _ in range(rounds):
            for variant in speeds:
                extra = {"response_format": long_list} if variant == "constrained" else {}
                started = time.perf_counter()
                model.generate(messages, max_new_tokens=1, steer=False, **extra)
                prefill = time.perf_counter() - started
                started = time.perf_counter()
                out = model.generate(messages, max_new_tokens=tokens, min_new_tokens=tokens, steer=False, **extra)
                decode = time.perf_counter() - started - prefill
                speeds[variant].append((out.completion_tokens - 1) / decode)
    finally:
        grammar_module.GrammarProcessor.__call__ = original
    return {
        "rounds": rounds, "tokens": tokens,
        **{f"{name}_tokens_per_s": {"median": round(statistics.median(v), 2), "min": round(min(v), 2),
                                    "max": round(max(v), 2)} for name, v in speeds.items()},
        "ratio_median": round(statistics.median(speeds["constrained"]) / statistics.median(speeds["unconstrained"]), 3),
        "grammar_ms_per_token": round(1000 * timed["grammar_s"] / max(timed["grammar_calls"], 1), 3),
    }


def parse_rates(model: PastaModel, limit: int, batch: int, budget_s: float, max_tokens: int, open_schemas: bool) -> dict:
    """Forced calls and structured outputs that parse and validate, over mixed prompts, batched. The
    schemas are closed (no extra keys, what the LangChain and LlamaIndex classes send by default)
    unless ``open_schemas``."""
    tools = TOOLS if open_schemas else [closed_schema(tool) for tool in TOOLS]
    schemas = SCHEMAS if open_schemas else {name: closed_schema(schema) for name, schema in SCHEMAS.items()}
    jobs = [("tool", prompt, None) for prompt in TOOL_PROMPTS] + [("structured", p, s) for s, p in STRUCTURED_PROMPTS]
    jobs = [jobs[i] for i in _interleaved(len(TOOL_PROMPTS), len(STRUCTURED_PROMPTS))][:limit]
    results: dict = {part: {"n": 0, "valid": 0, "closed_early": [], "failures": []} for part in ("tool", "structured")}
    started = time.perf_counter()
    ran = 0
    groups = [("tool", [j for j in jobs if j[0] == "tool"])] + [
        (name, [j for j in jobs if j[2] == name]) for name in SCHEMAS]
    for name, group in groups:
        for i in range(0, len(group), batch):
            if time.perf_counter() - started > budget_s:
                break
            chunk = group[i:i + batch]
            prompts = [[{"role": "user", "content": prompt}] for _, prompt, _ in chunk]
            if name == "tool":
                outs = model.generate_batch(prompts, tools=tools, tool_choice="required", max_new_tokens=max_tokens,
                                            steer=False)
                for (_, prompt, _), out in zip(chunk, outs):
                    ok = len(out.tool_calls) == 1 and not out.invalid_tool_calls
                    _count(results["tool"], ok, prompt, out.tool_calls or out.invalid_tool_calls, out.finish_reason)
            else:
                fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schemas[name]}}
                outs = model.generate_batch(prompts, response_format=fmt, max_new_tokens=max_tokens, steer=False)
                for (_, prompt, _), out in zip(chunk, outs):
                    try:
                        ok = schema_error(json.loads(out.text), schemas[name]) is None
                    except json.JSONDecodeError:
                        ok = False
                    _count(results["structured"], ok, prompt, out.text, out.finish_reason)
            ran += len(chunk)
    for part in ("tool", "structured"):
        results[part]["rate"] = round(results[part]["valid"] / max(results[part]["n"], 1), 3)
    results.update(prompts_run=ran, prompts_planned=len(jobs), seconds=round(time.perf_counter() - started, 1),
                   schemas="open" if open_schemas else "closed", max_new_tokens=max_tokens)
    return results


def _interleaved(a: int, b: int) -> list[int]:
    order = []
    for i in range(max(a, b)):
        if i < a:
            order.append(i)
        if i < b:
            order.append(a + i)
    return order


def _count(part: dict, ok: bool, prompt: str, output: object, finish_reason: str) -> None:
    """A valid output that ran into its token budget was closed by the grammar (``grammar.FINISH_WINDOW``)."""
    part["n"] += 1
    part["valid"] += ok
    if not ok:
        part["failures"].append({"prompt": prompt, "output": repr(output)[:300]})
    elif finish_reason == "length":
        part["closed_early"].append({"prompt": prompt, "output": repr(output)[:300]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--batch", type=int, default=9)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds for the parse-rate part")
    parser.add_argument("--open-schemas", action="store_true", help="the schemas as written (extra keys allowed)")
    parser.add_argument("--parts", default="libraries,decode,rates", help="which of the three parts to run")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    model = PastaModel.from_pretrained(args.model)
    report = {
        "command": f"python benchmarks/grammar_overhead.py --model {args.model} --rounds {args.rounds} --tokens "
                   f"{args.tokens} --prompts {args.prompts} --batch {args.batch} --max-tokens {args.max_tokens} "
                   f"--budget {args.budget:g} --parts {args.parts}{' --open-schemas' if args.open_schemas else ''} --out {args.out}",
        "machine": machine(None), "model": model.name,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after each part, so that a run cut short keeps what it measured
        report["seconds"] = round(time.perf_counter() - started, 1)
        args.out.write_text(json.dumps(report, indent=1) + "\n")

    parts = set(args.parts.split(","))
    if "libraries" in parts:
        report["libraries"] = library_masks(model)
        print(json.dumps(report["libraries"]), flush=True)
        save()
    if "decode" in parts:
        report["decode"] = decode_speed(model, args.rounds, args.tokens)
        print(json.dumps(report["decode"]), flush=True)
        save()
    if "rates" in parts:
        report["parse_rates"] = parse_rates(model, args.prompts, args.batch, args.budget, args.max_tokens,
                                            args.open_schemas)
        rates = report["parse_rates"]
        print(json.dumps({k: v for k, v in rates.items() if k not in ("tool", "structured")}),
              {k: {"n": rates[k]["n"], "rate": rates[k]["rate"]} for k in ("tool", "structured")})
        save()


if __name__ == "__main__":
    main()
