"""An agent loop whose system instruction must still hold after several turns and long tool output.

A plain loop (the default model has no tool calling): each turn the loop calls a LangChain tool,
appends its (long, untrusted) output to the conversation, and asks the model to answer. The system
message carries the instruction the answers must keep to. Run once with the plain model and once
with ChatPasta(pin_system=True), which emphasizes the system message on every call; nothing else in
the loop changes. Tool output goes through strip_markers: it is untrusted and must not steer.

    .venv/bin/python examples/langchain_agent.py
    .venv/bin/python examples/langchain_agent.py --lines 40 --turns 5

Seen with the default model (SmolLM2-135M-Instruct, 2 CPU cores): with 30 lines of tool output per
turn the unpinned model drops French from the first turn on (0 of 3), the pinned one keeps it (3 of 3),
though what it says in French is poor; with 12 lines both keep French. Pinning holds the format of the
answer, it does not make a 135M model a good weather reporter.
"""

from __future__ import annotations

import argparse
import re

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langchain_pasta import ChatPasta, strip_markers

INSTRUCTION = "You must answer in French."
CITIES = ["Oslo", "Lima", "Cairo", "Perth", "Quito", "Hanoi"]
FRENCH = re.compile(r"\b(le|la|les|est|et|de|des|du|il|elle|en|une|un|à|sont|avec|pour|très)\b", re.IGNORECASE)
ENGLISH = re.compile(r"\b(the|is|and|of|with|are|it|weather|today|in)\b", re.IGNORECASE)
LINES = 30
PIN_ALPHA = 0.1
"""The pin's alpha, set here rather than taken from the head set: a pinned instruction is a short span, and
steering every other token of a long conversation hard away (alpha 0.01) makes this small model degenerate."""


@tool
def weather_report(city: str) -> str:
    """Hourly readings of the weather stations of a city."""
    return "\n".join(
        f"{city} station {i:02d} reading: temperature {8 + i % 9} C, humidity {35 + (i * 7) % 50} percent, "
        f"wind {3 + i % 5} km/h from the {'north' if i % 2 else 'west'}, sky {'overcast' if i % 3 else 'clear'}."
        for i in range(LINES)
    )


def in_french(answer: str) -> bool:
    return len(FRENCH.findall(answer)) > len(ENGLISH.findall(answer))


def run(chat: ChatPasta, turns: int, instruction: str) -> list[str]:
    history: list[BaseMessage] = [SystemMessage(instruction)]
    answers = []
    for city in CITIES[:turns]:
        report = strip_markers(weather_report.invoke({"city": city}))
        history.append(HumanMessage(f"Weather service results for {city}:\n{report}\n\nWhat is the weather in {city}?"))
        answer = chat.invoke(history)
        history.append(AIMessage(answer.content))
        answers.append(answer.content.strip())
    return answers


def main() -> None:
    global LINES
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--lines", type=int, default=LINES, help="lines of tool output per turn")
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=PIN_ALPHA, help="steering strength of the pin")
    parser.add_argument("--instruction", default=INSTRUCTION)
    args = parser.parse_args()
    LINES = args.lines

    pinned = ChatPasta(model=args.model, max_tokens=args.max_tokens, pin_system=True, alpha=args.alpha)
    plain = ChatPasta(model=pinned.engine, max_tokens=args.max_tokens)  # no emphasis: the plain model
    print(f"System instruction: {args.instruction!r}; {args.turns} turns, {LINES} lines of tool output each.\n")
    results = {"unpinned": run(plain, args.turns, args.instruction), "pinned": run(pinned, args.turns, args.instruction)}
    for turn, city in enumerate(CITIES[: args.turns]):
        print(f"turn {turn + 1} ({city}):")
        for name, answers in results.items():
            mark = "French" if in_french(answers[turn]) else "NOT French"
            print(f"   {name:>8} [{mark}]: {answers[turn]}")
        print()
    for name, answers in results.items():
        print(f"{name}: instruction held in {sum(map(in_french, answers))} of {len(answers)} turns")


if __name__ == "__main__":
    main()
