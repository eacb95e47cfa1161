"""``--api-key``: every /v1 request must carry ``Authorization: Bearer KEY``.

The key is compared with ``hmac.compare_digest`` so the time a wrong key takes to refuse says
nothing about how much of it was right.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import Request

from .errors import APIError


def bearer_check(api_key: str | None) -> Callable[[Request], None]:
    """A FastAPI dependency that refuses requests without the key (none when ``api_key`` is None)."""

    def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise APIError(401, "Missing API key: send the header 'Authorization: Bearer KEY' (the OpenAI client's "
                           "api_key) with the key the server was started with.", code="invalid_api_key")
        if not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(401, "Incorrect API key: it does not match the server's --api-key.",
                           code="invalid_api_key")

    return check
