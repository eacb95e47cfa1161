"""Mark retrieved nodes for emphasis, for prompts PastaLLM does not format itself.

Query engines and chat engines hand retrieved text to PastaLLM as the
``context_str`` template variable, which PastaLLM emphasizes on its own. This
postprocessor is for the other routes: your own code joining node text into a
prompt, a custom template variable not listed in ``context_variables``, or any
LLM call that receives node text already formatted.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.bridge.pydantic import Field
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from pasta_rag import strip_markers
from pasta_rag.untrusted import emphasize_facts


class PastaNodePostprocessor(BaseNodePostprocessor):
    """Emphasize each retrieved node's facts, after removing forged markers.

    Node text is untrusted: a document holding the marker characters would otherwise steer the
    model toward itself, and one holding an order to the assistant would have it pushed up with its
    facts. Marker characters are removed from the text and from string metadata, and the sentences
    that read as orders stay unemphasized (``pasta_rag.untrusted``); each node is one passage, so
    PastaLLM's ``select="relevant"`` steers the nodes that answer the question. With
    ``emphasize=False`` it only strips forged markers (a sanitizer). Nodes are copied, never changed in
    place, so the docstore keeps the original text.

    Examples:
        ```python
        engine = index.as_chat_engine(chat_mode="context", node_postprocessors=[PastaNodePostprocessor()])
        ```
    """

    emphasize: bool = Field(default=True, description="Emphasize node text; False only strips forged markers.")

    @classmethod
    def class_name(cls) -> str:
        return "PastaNodePostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return [NodeWithScore(node=self._mark(item.node), score=item.score) for item in nodes]

    def _mark(self, node: Any) -> Any:
        if not isinstance(node, TextNode):
            return node
        text = strip_markers(node.get_content(metadata_mode=MetadataMode.NONE))
        marked = node.model_copy()
        marked.metadata = {k: strip_markers(v) if isinstance(v, str) else v for k, v in node.metadata.items()}
        marked.set_content(emphasize_facts(text) if self.emphasize else text)
        return marked
