"""examples/llamaindex_agent.py runs (one short question per agent, the default model), so it cannot silently
break."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_model

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_the_agent_example_calls_a_tool_and_answers(real_core, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    example = importlib.import_module("llamaindex_agent")
    runs = example.main(["--lines", "3", "--questions", "1"])
    assert set(runs) == {"plain", "pinned"}
    for ((results, output),) in runs.values():
        assert [r.tool_name for r in results] == ["weather_report"]
        assert str(output.response.content).strip()
    assert "answered [" in capsys.readouterr().out
    for name in ("llamaindex_agent", "langchain_agent", "agent_tools"):
        sys.modules.pop(name, None)
