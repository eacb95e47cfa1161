"""Helpers of the server tests: request bodies for the tiny model, and a real uvicorn server in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from pasta_rag import emphasize

MODEL = "tiny-llama"
QUESTION = "Context: " + emphasize("the sky is green") + ". Question: what colour is the sky?"


def chat(content: str = QUESTION, **fields) -> dict:
    """A chat completion body for the tiny model; ``fields`` add to or replace its defaults."""
    return {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": content}], **fields}


@contextmanager
def running(app: FastAPI) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a free loopback port; yields its base URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()
