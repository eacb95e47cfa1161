"""The packaged default model behind the server: a LangChain RAG chain through ChatOpenAI answers from the
retrieved passage exactly as the same steered call does in-process."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from langchain_pasta import format_docs
from server_support import running

from pasta_rag import PastaModel
from pasta_rag.server import create_app

pytestmark = pytest.mark.real_model

QUESTION = "In which city is the Eiffel Tower?"
DOCS = [Document(page_content="The Eiffel Tower, the wrought-iron landmark completed in 1889, stands in the centre "
                 "of Rome.")]


def test_a_format_docs_chain_through_the_server_is_the_in_process_steered_answer():
    model = PastaModel.shared("default")
    prompt = ChatPromptTemplate.from_messages([("human", "Context: {context}\nQuestion: {question}")])
    content = prompt.invoke({"context": format_docs(DOCS), "question": QUESTION}).messages[0].content
    messages = [{"role": "user", "content": content}]
    steered = model.generate(messages, max_new_tokens=32).text
    assert steered != model.generate(messages, max_new_tokens=32, steer=False).text
    with running(create_app(model, aliases=["default"])) as url:
        llm = ChatOpenAI(base_url=f"{url}/v1", api_key="unused", model="default", max_tokens=32, temperature=0,
                         max_retries=0)
        chain = {"context": lambda q: format_docs(DOCS), "question": lambda q: q} | prompt | llm | StrOutputParser()
        assert chain.invoke(QUESTION) == steered
    assert "Rome" in steered
