"""langchain-tests' standard integration suite for ChatPasta, on the real default model.

SmolLM2-135M-Instruct is a local model without tool calling, structured output, JSON mode or
multimodal input: the suite's properties say so (their defaults, since ChatPasta overrides neither
bind_tools nor with_structured_output), and it skips those tests itself. Answers are kept short
(max_tokens) so the suite runs in a few minutes on two CPU cores.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_pasta import ChatPasta
from langchain_tests.integration_tests import ChatModelIntegrationTests

pytestmark = pytest.mark.real_model


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
