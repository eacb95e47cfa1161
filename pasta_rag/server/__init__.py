"""``pasta-rag serve``: a steered model behind the OpenAI API (install the ``serve`` extra).

``create_app(model)`` builds the FastAPI app; the command runs it with uvicorn.
"""

from .app import create_app

__all__ = ["create_app"]
