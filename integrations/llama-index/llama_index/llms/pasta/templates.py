"""Emphasis of retrieved text at the moment LlamaIndex formats a prompt template.

Query engines, response synthesizers and chat engines never hand the LLM the retrieved text on its
own: it arrives as template variables. Wrapping those variables, right before the template is
formatted, is what steers every response mode toward the documents with no markup from the user.
``TemplateEmphasis`` hooks that into every path where LlamaIndex formats a template for an LLM.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.prompts.base import BasePromptTemplate
from llama_index.core.types import Model

from pasta_rag import emphasize, strip_markers
from pasta_rag.emphasis import INSTRUCTIONS, emphasize_unmarked
from pasta_rag.untrusted import emphasize_facts, unemphasized

DEFAULT_CONTEXT_VARIABLES = ("context_str", "context_msg", "existing_answer")
"""The template variables LlamaIndex's synthesizers and chat engines use for retrieved text
(``context_str``), the next chunk in refine (``context_msg``) and the answer so far
(``existing_answer``, built from earlier chunks)."""

CHUNK_SEPARATOR = re.compile(r"\n\s*\n")
"""What LlamaIndex puts between the retrieved chunks it packs into one ``context_str`` (a blank line)."""


HEADING = re.compile(r"[^\n.!?]{1,80}")
"""A chunk that is one short line with no sentence end: a document's title, not a passage of its own."""


def emphasize_chunks(text: str) -> str:
    """Retrieved text with each chunk a passage of its own, and only its facts emphasized.

    One span per chunk lets ``select="relevant"`` steer the chunks that answer the question rather
    than everything retrieved; leaving out the sentences that read as orders keeps an attacker's
    instruction in a retrieved page from being pushed up with its facts. A title stays with the
    passage below it: alone, it would match the question best and win the passage's emphasis.
    """
    text = strip_markers(text)
    pieces, position = [], 0
    for separator in CHUNK_SEPARATOR.finditer(text):
        if HEADING.fullmatch(text[position : separator.start()].strip()):
            continue
        pieces += [emphasize_facts(text[position : separator.start()]), separator.group()]
        position = separator.end()
    pieces.append(emphasize_facts(text[position:]))
    return "".join(pieces)


def mark_value(name: str, value: str) -> str:
    """A context variable's value marked: retrieved chunks by their facts; the answer so far (the model's own
    text from earlier chunks) whole."""
    return emphasize(value) if name == "existing_answer" else emphasize_chunks(value)


def mark_template(
    prompt: BasePromptTemplate, prompt_args: dict[str, Any], names: Collection[str], emphasize_context: bool
) -> tuple[BasePromptTemplate, dict[str, Any]]:
    """Emphasize (or, with ``emphasize_context=False``, only sanitize) the context variables of a template.

    Their values are untrusted (a poisoned document may hold marker characters), so forged markers
    are removed either way. Both the call's arguments and the template's partially formatted
    variables are covered: refine puts ``existing_answer`` into the template with ``partial_format``.
    """
    if not names:
        return prompt, prompt_args
    def marked(values: dict[str, Any]) -> dict[str, Any]:
        return {k: mark_value(k, v) if emphasize_context else unemphasized(v)
                for k, v in values.items() if k in names and isinstance(v, str) and v}

    args = {**prompt_args, **marked(prompt_args)}
    partials = marked(getattr(prompt, "kwargs", None) or {})
    if partials:
        prompt = prompt.partial_format(**partials)
    return prompt, args


class TemplateEmphasis:
    """The LLM's prompt-formatting hooks, with the context variables marked first (a mixin for PastaLLM).

    It reads the LLM's ``context_variables``, ``emphasize_context``, ``emphasize_system_prompt``,
    ``system_prompt`` and ``query_wrapper_prompt`` fields.
    """

    if TYPE_CHECKING:  # the LLM's fields; not declared at run time, where pydantic would take them for its own
        context_variables: list[str]
        emphasize_context: bool
        emphasize_system_prompt: bool
        system_prompt: str | None
        query_wrapper_prompt: BasePromptTemplate | None

    def _mark_template(self, prompt: Any, prompt_args: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        return mark_template(prompt, prompt_args, set(self.context_variables), self.emphasize_context)

    def _get_prompt(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        prompt, prompt_args = self._mark_template(prompt, prompt_args)
        return super()._get_prompt(prompt, **prompt_args)  # type: ignore[misc]

    def _get_messages(self, prompt: BasePromptTemplate, **prompt_args: Any) -> list[ChatMessage]:
        prompt, prompt_args = self._mark_template(prompt, prompt_args)
        return super()._get_messages(prompt, **prompt_args)  # type: ignore[misc]

    def _extend_prompt(self, formatted_prompt: str) -> str:
        """Instruction pinning on the text-completion path: the system prompt goes in emphasized."""
        if self.system_prompt and self.emphasize_system_prompt:
            formatted_prompt = emphasize_unmarked(self.system_prompt, INSTRUCTIONS) + "\n\n" + formatted_prompt
            if self.query_wrapper_prompt:
                formatted_prompt = self.query_wrapper_prompt.format(query_str=formatted_prompt)
            return formatted_prompt
        return super()._extend_prompt(formatted_prompt)  # type: ignore[misc]

    # The structured paths format the template inside a pydantic program, not in _get_prompt.

    def structured_predict(self, output_cls: type[Model], prompt: Any, llm_kwargs: dict[str, Any] | None = None,
                           **prompt_args: Any) -> Model:
        prompt, prompt_args = self._mark_template(prompt, prompt_args)
        return super().structured_predict(  # type: ignore[misc]
            output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args
        )

    async def astructured_predict(self, output_cls: type[Model], prompt: Any,
                                  llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Model:
        prompt, prompt_args = self._mark_template(prompt, prompt_args)
        return await super().astructured_predict(  # type: ignore[misc]
            output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args
        )

    def stream_structured_predict(self, output_cls: type[Model], prompt: Any,
                                  llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Any:
        prompt, prompt_args = self._mark_template(prompt, prompt_args)
        return super().stream_structured_predict(  # type: ignore[misc]
            output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args
        )

    async def astream_structured_predict(self, output_cls: type[Model], prompt: Any,
                                         llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Any:
        prompt, prompt_args = self._mark_template(prompt, prompt_args)
        return await super().astream_structured_predict(  # type: ignore[misc]
            output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args
        )
