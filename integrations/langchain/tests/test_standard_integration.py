"""langchain-tests' standard integration suite for ChatPasta, on the real default model.

Two classes, so that the suite stays short on two CPU cores: the plain chat tests with short answers
(max_tokens=10), and the tool-calling and structured-output tests, whose calls and JSON need room
(max_tokens=64), in a class that runs only those. SmolLM2-135M-Instruct has no image, audio or PDF
input: the suite's defaults say so and skip those tests. Forced tool calls and structured output are
decoded under a grammar and pass; the tests that leave the choice to the model ("auto") are marked
xfail with the reason where the 135M model does not call the tool on its own.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_pasta import ChatPasta
from langchain_tests.integration_tests import ChatModelIntegrationTests

pytestmark = pytest.mark.real_model

TOOL_TESTS = frozenset({
    "test_tool_calling", "test_tool_calling_async", "test_bind_runnables_as_tools",
    "test_tool_message_histories_string_content", "test_tool_message_histories_list_content", "test_tool_choice",
    "test_tool_calling_with_no_arguments", "test_tool_message_error_status", "test_structured_few_shot_examples",
    "test_structured_output", "test_structured_output_async", "test_structured_output_pydantic_2_v1",
    "test_structured_output_optional_param", "test_json_mode", "test_agent_loop", "test_unicode_tool_call_integration",
})


class TestChatPastaIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatPasta]:
        return ChatPasta

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # "default" goes through the per-process engine cache: every test's instance shares one load.
        return {"model": "default", "max_tokens": 10}

    @property
    def supports_model_override(self) -> bool:
        return False  # one loaded model per instance; another model is another ChatPasta

    @property
    def has_tool_calling(self) -> bool:
        return False  # run by TestChatPastaToolsIntegration, with room for the calls

    @property
    def has_structured_output(self) -> bool:
        return False  # likewise


LOOPS_IN_A_STRING = ("the 135M model repeats itself inside the joke's first string field until max_tokens: the "
                     "grammar keeps the JSON well-formed but cannot end a string the model will not close")


class TestChatPastaToolsIntegration(ChatModelIntegrationTests):
    only = TOOL_TESTS
    expected_failures = {
        "test_structured_output[pydantic]": LOOPS_IN_A_STRING,
        "test_structured_output_async[pydantic]": LOOPS_IN_A_STRING,
        "test_structured_output_pydantic_2_v1": LOOPS_IN_A_STRING,
        "test_json_mode": "json_mode constrains the answer to a JSON object, not to the schema's keys, and the "
                          "135M model leaves out the required punchline",
        "test_agent_loop": "the tool choice is left to the model (auto), and the 135M model answers in prose "
                           "instead of calling get_weather; forced choices pass (test_tool_calling, test_tool_choice)",
    }

    @property
    def chat_model_class(self) -> type[ChatPasta]:
        return ChatPasta

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "default", "max_tokens": 64}

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True
