"""Pinned system instructions inside a real LangChain agent: steered (ChatPasta(pin_system=True)) vs
unsteered, the same weights, the agent of examples/langchain_agent.py.

Each conversation asks several questions in a row (a weather question, answered by the long, untrusted
``weather_report``, and a currency question, answered by ``country_facts``; the order alternates between
conversations). The system prompt says to answer in French. Per turn:

* ``kept``: the final answer is in French (the crude word test of the example);
* ``valid_call``: the forced first call (tool_choice="any": the model picks the tool) parsed and matched
  its tool's schema (no invalid tool call);
* ``right_tool``: it called the tool that answers the question;
* ``filled_call``: no argument of that call is empty (a call the token budget cut short has its value closed
  early, so it is valid but empty);
* ``copied_result``: the answer repeats a tool result of the conversation instead of answering.

    python benchmarks/agents.py --conversations 20 --turns 2 --out benchmarks/results/agents_smollm2.json
    python benchmarks/agents.py --conversations 2 --show 2      # a small sample, conversations printed

``--out`` is rewritten after every conversation, and a rerun with the same settings resumes from it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_pasta import ChatPasta

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import agent_tools  # noqa: E402
from langchain_agent import INSTRUCTION, build_agent, final_answer, in_french, make_tools  # noqa: E402

VARIANTS = ("unsteered", "steered")


def conversation(index: int, turns: int) -> list[tuple[str, str]]:
    """(question, the tool that answers it) for one conversation: weather and currency questions in turn."""
    asked = []
    for i in range(turns):
        if (index + i) % 2 == 0:
            city = agent_tools.CITIES[(index + i) % len(agent_tools.CITIES)]
            asked.append((f"What is the weather in {city} today?", "weather_report"))
        else:
            country = agent_tools.countries()[(index + i) % len(agent_tools.countries())]
            asked.append((f"What is the currency of {country}?", "country_facts"))
    return asked


def run_conversation(agent, asked: list[tuple[str, str]]) -> list[dict]:
    """The agent's turns, scored."""
    history, scored, seen = [], [], []
    for question, expected in asked:
        result = agent.invoke({"messages": [*history, HumanMessage(question)]})
        added = result["messages"][len(history) + 1:]
        history = result["messages"]
        first = next((m for m in added if isinstance(m, AIMessage)), None)
        calls = first.tool_calls if first is not None else []
        answer = final_answer(added)
        seen += [m.text for m in added if isinstance(m, ToolMessage)]
        scored.append({
            "question": question,
            "expected_tool": expected,
            "called": [c["name"] for c in calls],
            "arguments": [c["args"] for c in calls],
            "valid_call": bool(calls) and not first.invalid_tool_calls,
            "right_tool": bool(calls) and calls[0]["name"] == expected,
            "filled_call": bool(calls) and all(str(value).strip() for value in calls[0]["args"].values()),
            "answer": answer,
            "kept": in_french(answer),
            "copied_result": copies_a_result(answer, seen),
        })
    return scored


def copies_a_result(answer: str, results: list[str]) -> bool:
    """Whether the answer repeats a tool result of the conversation (this turn's or an earlier one's)
    instead of answering: its opening, past any ``<tool_response>`` tag, is a line of a result."""
    opening = answer.replace("<tool_response>", "").strip()[:30]
    return bool(opening) and any(opening in result for result in results)


def share(turns: list[dict], key: str) -> float:
    return round(sum(t[key] for t in turns) / len(turns), 3) if turns else 0.0


def summary(conversations: list[list[dict]]) -> dict:
    turns = [t for c in conversations for t in c]
    by_turn = [[c[i] for c in conversations if len(c) > i] for i in range(max(map(len, conversations), default=0))]
    return {
        "conversations": len(conversations), "turns": len(turns),
        **{key: share(turns, key) for key in ("kept", "valid_call", "right_tool", "filled_call", "copied_result")},
        "kept_by_turn": [share(t, "kept") for t in by_turn],
    }


def resumed(out: Path | None, settings: dict) -> tuple[dict[str, list[list[dict]]], float]:
    """The conversations an earlier run with the same settings wrote to ``out``, and its seconds."""
    if out is None or not out.exists():
        return {name: [] for name in VARIANTS}, 0.0
    earlier = json.loads(out.read_text())
    differing = {key: (earlier.get(key), value) for key, value in settings.items() if earlier.get(key) != value}
    if differing:
        sys.exit(f"{out} was written with other settings ({differing}, as (there, now)): "
                 "pass another --out, or the same settings to resume it.")
    return earlier["conversations"], float(earlier["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--lines", type=int, default=agent_tools.REPORT_LINES, help="lines of a weather report")
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--model", default="default")
    parser.add_argument("--show", type=int, default=0, help="print this many conversations per variant")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    pinned = ChatPasta(model=args.model, max_tokens=args.max_tokens, pin_system=True)
    chats = {"unsteered": ChatPasta(model=pinned.engine, max_tokens=args.max_tokens), "steered": pinned}
    tools = make_tools(args.lines)
    settings = {"model": pinned.engine.name, "instruction": INSTRUCTION, "lines": args.lines, "turns": args.turns,
                "max_tokens": args.max_tokens}
    results, earlier_seconds = resumed(args.out, settings)
    started = time.time() - earlier_seconds
    for index in range(len(results["steered"]), args.conversations):
        asked = conversation(index, args.turns)
        for name in VARIANTS:
            scored = run_conversation(build_agent(chats[name], tools, INSTRUCTION), asked)
            results[name].append(scored)
            if index < args.show:
                print(f"--- {name}, conversation {index}")
                for turn in scored:
                    print(f"  {turn['question']} -> {turn['called']} {turn['arguments']}; kept={turn['kept']}: "
                          f"{turn['answer'][:160]!r}")
        print(f"{index + 1}/{args.conversations} conversations, {time.time() - started:.0f} s", flush=True)
        report = {
            "command": "python " + " ".join(sys.argv),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            **settings, "seconds": round(time.time() - started),
            "summary": {name: summary(results[name]) for name in VARIANTS},
            "conversations": results,
        }
        if args.out:  # written after every conversation: an interrupted run keeps what it measured
            args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
    main()
