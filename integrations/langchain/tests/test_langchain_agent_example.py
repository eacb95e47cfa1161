"""examples/langchain_agent.py runs (one short turn per agent, the default model), so it cannot silently break."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, ToolMessage

pytestmark = pytest.mark.real_model

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_the_agent_example_calls_a_tool_and_answers(real_engine, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    example = importlib.import_module("langchain_agent")
    runs = example.main(["--turns", "1", "--lines", "3", "--max-tokens", "40"])
    assert set(runs) == {"plain", "pinned"}
    for (turn,) in runs.values():
        call, result, answer = turn
        assert call.tool_calls[0]["name"] == "weather_report" and isinstance(result, ToolMessage)
        assert isinstance(answer, AIMessage) and answer.text.strip()
    assert "the instruction held in" in capsys.readouterr().out
    sys.modules.pop("langchain_agent", None)
