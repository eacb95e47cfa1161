"""A LlamaIndex FunctionAgent over PastaLLM whose system prompt is pinned on every model call.

The tools and the instruction are those of examples/langchain_agent.py (examples/agent_tools.py): a
country facts lookup over data packaged with pasta-rag, and a long weather report whose last line is
an injected order to reply in English. ``PastaLLM(emphasize_system_prompt=True)`` pins the agent's
system prompt; tool results are tool messages, never emphasized. The same questions run with the
plain model (same weights) and the pinned one.

The 135M default model almost never calls a tool on its own, so the agent's first call of each run is
forced (``initial_tool_choice="required"``: decoded under a JSON grammar, the model picks the tool).

    .venv/bin/python examples/llamaindex_agent.py
    .venv/bin/python examples/llamaindex_agent.py --lines 40
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from llama_index.core.agent.workflow import AgentOutput, FunctionAgent, ToolCallResult
from llama_index.core.tools import FunctionTool
from llama_index.llms.pasta import PastaLLM

sys.path.insert(0, str(Path(__file__).parent))
import agent_tools  # noqa: E402
from langchain_agent import INSTRUCTION, in_french  # noqa: E402  (the same instruction and language test)

QUESTIONS = ["What is the weather in Oslo today?", "What is the currency of Poland?"]


def make_tools(lines: int = agent_tools.REPORT_LINES) -> list[FunctionTool]:
    """The two tools, as LlamaIndex tools."""
    return [FunctionTool.from_defaults(agent_tools.country_facts),
            FunctionTool.from_defaults(agent_tools.weather_report_tool(lines))]


async def ask(agent: FunctionAgent, question: str) -> tuple[list[ToolCallResult], AgentOutput]:
    """The tool calls the agent ran for one question, and its final output."""
    handler = agent.run(user_msg=question)
    results = [event async for event in handler.stream_events() if isinstance(event, ToolCallResult)]
    return results, await handler


def main(argv: list[str] | None = None) -> dict[str, list[tuple[list[ToolCallResult], AgentOutput]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=agent_tools.REPORT_LINES, help="lines of each weather report")
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="tokens per model call (a tool call needs ~30)")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    args = parser.parse_args(argv)

    pinned = PastaLLM(model=args.model, max_new_tokens=args.max_new_tokens, emphasize_system_prompt=True)
    plain = PastaLLM(model=pinned.pasta_model, max_new_tokens=args.max_new_tokens)  # same weights, no pin
    tools = make_tools(args.lines)
    runs = {}
    for name, llm in (("plain", plain), ("pinned", pinned)):
        agent = FunctionAgent(llm=llm, tools=tools, system_prompt=INSTRUCTION, initial_tool_choice="required")
        runs[name] = [asyncio.run(ask(agent, question)) for question in QUESTIONS[: args.questions]]
    print(f"System prompt: {INSTRUCTION!r}; weather reports of {args.lines} lines.\n")
    for number, question in enumerate(QUESTIONS[: args.questions]):
        print(f"{question}")
        for name, answers in runs.items():
            results, output = answers[number]
            answer = str(output.response.content or "").strip()
            mark = "French" if in_french(answer) else "NOT French"
            print(f"   {name:>6} called {[r.tool_name for r in results]}, answered [{mark}]: {answer}")
        print()
    return runs


if __name__ == "__main__":
    main()
