"""Real clients against a real server: the openai package, LangChain's ChatOpenAI, LlamaIndex's OpenAILike.

Each answer must equal the same greedy call made in-process: the proof that emphasis (marker
characters, extra_body fields) reaches the model unchanged through the client and the server.
"""

from __future__ import annotations

import openai
import pytest
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from langchain_pasta import format_docs
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai_like import OpenAILike
from server_support import MODEL, QUESTION, running

from pasta_rag import strip_markers
from pasta_rag.server import create_app

MESSAGES = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def client(live_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_url}/v1", api_key="unused", max_retries=0)


def test_openai_chat_completion(client, model):
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    expected = model.generate(MESSAGES, max_new_tokens=8)
    assert completion.choices[0].message.content == expected.text
    assert completion.usage.prompt_tokens == expected.prompt_tokens
    assert completion.model_extra["pasta"]["steered"] is True
    assert [m.id for m in client.models.list()] == [MODEL]


def test_openai_stream_with_usage(client, model):
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == model.generate(MESSAGES, max_new_tokens=8).text
    assert chunks[-1].usage.completion_tokens == 8


def test_openai_extra_body_emphasis_and_steering(client, model):
    plain = [{"role": "user", "content": strip_markers(QUESTION)}]
    completion = client.chat.completions.create(
        model=MODEL, messages=plain, max_tokens=8,
        extra_body={"emphasis": ["the sky is green"], "pasta": {"alpha": 0.1, "heads": [2]}})
    expected = model.generate(plain, emphasis=["the sky is green"], alpha=0.1, heads=[2], max_new_tokens=8).text
    assert expected != model.generate(plain, max_new_tokens=8, steer=False).text
    assert completion.choices[0].message.content == expected


def test_openai_text_completion(client, model):
    completion = client.completions.create(model=MODEL, prompt=QUESTION, max_tokens=6)
    assert completion.choices[0].text == model.generate(QUESTION, max_new_tokens=6).text


def test_openai_errors_are_the_clients_typed_errors(client, live_url):
    with pytest.raises(openai.NotFoundError, match="does not exist here"):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="logprobs cannot be honoured"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, logprobs=True)
    with pytest.raises(openai.BadRequestError, match="one choice per request"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)


def test_openai_api_key(model):
    with running(create_app(model, api_key="s3cret")) as url:
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="guess", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        right = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert right.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2).choices


def test_langchain_chat_openai_with_format_docs(live_url, model):
    docs = [Document(page_content="The sky is green."), Document(page_content="Grass is blue.")]
    prompt = ChatPromptTemplate.from_messages([("human", "Context: {context}\nQuestion: {question}")])
    llm = ChatOpenAI(base_url=f"{live_url}/v1", api_key="unused", model=MODEL, max_tokens=8, temperature=0,
                     max_retries=0)
    chain = {"context": lambda q: format_docs(docs), "question": lambda q: q} | prompt | llm | StrOutputParser()
    answer = chain.invoke("What colour is the sky?")
    content = prompt.invoke({"context": format_docs(docs), "question": "What colour is the sky?"}).messages[0].content
    assert strip_markers(content) != content  # format_docs marked the documents
    expected = model.generate([{"role": "user", "content": content}], max_new_tokens=8, temperature=0)
    assert expected.text != model.generate([{"role": "user", "content": content}], max_new_tokens=8, steer=False).text
    assert answer == expected.text
    assert "".join(chain.stream("What colour is the sky?")) == expected.text
    relevant = llm.bind(extra_body={"pasta": {"select": "relevant"}})
    assert (prompt | relevant | StrOutputParser()).invoke({"context": format_docs(docs), "question": "What colour "
                                                           "is the sky?"}) == model.generate(
        [{"role": "user", "content": content}], max_new_tokens=8, select="relevant").text


def test_llama_index_openai_like(live_url, model):
    llm = OpenAILike(model=MODEL, api_base=f"{live_url}/v1", api_key="unused", is_chat_model=True, max_tokens=8,
                     temperature=0, context_window=512, max_retries=0)
    expected = model.generate(MESSAGES, max_new_tokens=8).text
    assert llm.chat([ChatMessage(role="user", content=QUESTION)]).message.content == expected
    assert "".join(r.delta for r in llm.stream_chat([ChatMessage(role="user", content=QUESTION)])) == expected
    completer = OpenAILike(model=MODEL, api_base=f"{live_url}/v1", api_key="unused", is_chat_model=False,
                           max_tokens=6, temperature=0, context_window=512, max_retries=0)
    assert completer.complete(QUESTION).text == model.generate(QUESTION, max_new_tokens=6).text
    assert "".join(r.delta for r in completer.stream_complete(QUESTION)) == model.generate(QUESTION,
                                                                                          max_new_tokens=6).text
