"""langchain-tests' standard unit suite for ChatPasta, on the core's tiny random model."""

from __future__ import annotations

from typing import Any

from langchain_pasta import ChatPasta
from langchain_tests.unit_tests import ChatModelUnitTests
from lc_pasta_support import tiny_engine


class TestChatPastaUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatPasta]:
        return ChatPasta

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": tiny_engine()}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # one loaded model per instance; another model is another ChatPasta
