"""Test helpers for llama-index-llms-pasta (named uniquely: pytest imports it next to the core tests)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tiny import char_tokenizer, tiny_model

from pasta_rag import UNSET, PastaModel, Steering
from pasta_rag.streaming import TextStream


def tiny_pasta_model(chat_template: bool = True) -> PastaModel:
    """The random tiny Llama with a character tokenizer; its window is widened so real templates fit."""
    model = tiny_model("llama")
    model.config.max_position_embeddings = 4096  # rotary positions have no hard limit; the prompts need room
    tokenizer = char_tokenizer() if chat_template else char_tokenizer(chat_template=None)
    return PastaModel(model, tokenizer, heads=[1, 2], name="tiny-llama",
                      groups={"instructions": Steering(heads=[0])})  # pinned text: its own layer, as a real set


@dataclass
class Call:
    prompt: Any
    kwargs: dict
    text: str  # the final prompt the model read (template applied, markers stripped)
    spans: list  # the context group's
    groups: dict = field(default_factory=dict)  # the other groups' spans, by name
    output: str = ""

    @property
    def emphasized(self) -> list[str]:
        return [self.text[start:end] for start, end in self.spans]

    @property
    def pinned(self) -> list[str]:
        """The text of the instructions group (pinned instructions)."""
        return [self.text[start:end] for start, end in self.groups.get("instructions", [])]

    def unemphasized(self) -> str:
        """The prompt with the emphasized spans cut out."""
        pieces, last = [], 0
        for start, end in self.spans:
            pieces.append(self.text[last:start])
            last = end
        return "".join(pieces) + self.text[last:]

    def is_emphasized(self, needle: str, group: str = "context") -> bool:
        """Whether every occurrence of ``needle`` lies inside one span of ``group``."""
        spans = self.spans if group == "context" else self.groups.get(group, [])
        start = self.text.find(needle)
        assert start >= 0, f"{needle!r} is not in the prompt"
        while start >= 0:
            if not any(s <= start and start + len(needle) <= e for s, e in spans):
                return False
            start = self.text.find(needle, start + 1)
        return True


@dataclass
class CoreSpy:
    """Records what PastaLLM hands the core model (generate and stream), and what came back; a spied stream
    is still the core's ``TextStream`` (its ``generation``, with a streamed tool call, reaches PastaLLM)."""

    core: PastaModel
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        generate, stream = self.core.generate, self.core.stream

        def spy_generate(prompt, **kwargs):
            call = self._record(prompt, kwargs)
            result = generate(prompt, **kwargs)
            call.output = result.text
            return result

        def spy_stream(prompt, **kwargs):
            call = self._record(prompt, kwargs)
            inner = stream(prompt, **kwargs)

            def chunks(outer: TextStream):
                try:
                    for chunk in inner:
                        call.output += chunk
                        yield chunk
                    outer.generation = inner.generation  # a streamed tool call is read from it at the end
                finally:
                    inner.close()

            return TextStream(chunks)

        self.core.generate, self.core.stream = spy_generate, spy_stream

    def restore(self) -> None:
        """Stop spying (for a model shared by several tests)."""
        del self.core.generate, self.core.stream

    def _record(self, prompt, kwargs) -> Call:
        rendered = self.core.render(prompt, emphasis=kwargs.get("emphasis"), tools=kwargs.get("tools"),
                                    tool_choice=kwargs.get("tool_choice"))  # tools change the system message
        call = Call(prompt, self._flat(kwargs), rendered.text, rendered.spans, dict(rendered.groups))
        self.calls.append(call)
        return call

    def _flat(self, kwargs: dict) -> dict:
        """The call's options by name, as the tests read them: the decoding settings, each steering field
        (None: not set), and ``steer``, whether the core steers (the call's ``enabled``, else the model's)."""
        steering, settings = kwargs.get("steering") or Steering(), kwargs.get("settings")
        flat = {k: v for k, v in kwargs.items() if k not in ("steering", "settings")}
        if settings is not None:
            flat.update((f.name, getattr(settings, f.name)) for f in dataclasses.fields(settings))
        flat.update((f.name, None if getattr(steering, f.name) is UNSET else getattr(steering, f.name))
                    for f in dataclasses.fields(steering))
        flat["steer"] = self.core.steering.override(steering).enabled
        return flat
