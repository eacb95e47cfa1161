"""Scale-out: replicas of the same FastAPI app on Ray Serve, behind Ray's own HTTP proxy (the ``ray`` extra).

Each replica loads its own copy of the model (one per GPU with ``gpus_per_replica=1``, else one per CPU
worker) and serves the app ``create_app`` builds; Ray's proxy spreads the requests. Every response names
the replica that answered in ``X-Pasta-Replica``. From the command line::

    pasta-rag serve --replicas 2 [--gpus-per-replica 1] [--ray-address auto]
    serve run pasta_rag.server.ray_serve:build model=default replicas=2
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .app import DEFAULT_MAX_BODY_BYTES, create_app

REPLICA_HEADER = "X-Pasta-Replica"


class ServeArgs(BaseModel):
    """What ``serve run ... key=value`` and ``pasta-rag serve --replicas`` configure; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")

    model: str = "default"
    heads: str | None = None
    """A head set file or a shipped set's purpose; a file must exist at this path on every node."""
    api_key: str | None = None
    replicas: Annotated[int, Field(ge=1)] = 1
    gpus_per_replica: Annotated[float, Field(ge=0)] = 0
    """0: CPU replicas (one CPU each); 1: one replica per GPU; a fraction shares a GPU."""
    batch_window_ms: Annotated[float, Field(ge=0)] = 10.0
    max_batch_size: Annotated[int, Field(ge=1)] = 16
    max_body_bytes: Annotated[int, Field(ge=1)] = DEFAULT_MAX_BODY_BYTES


class ReplicaHeader:
    """ASGI middleware adding the replica's name to every HTTP response (streams included)."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app, self.replica = app, replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (REPLICA_HEADER.lower().encode(),
                                                                     self.replica.encode())]
            await send(message)

        await self.app(scope, receive, send_with_header)


def replica_app(args: ServeArgs, replica: str) -> FastAPI:
    """The app one replica serves: the model loaded here (on the replica's GPU when it has one)."""
    from ..engine import PastaModel

    model = PastaModel.from_pretrained(args.model, heads=args.heads)
    app = create_app(model, aliases=[args.model], api_key=args.api_key, batch_window_ms=args.batch_window_ms,
                     max_batch_size=args.max_batch_size, max_body_bytes=args.max_body_bytes)
    app.add_middleware(ReplicaHeader, replica=replica)
    return app


@serve.deployment(name="pasta-rag")
@serve.ingress()
class PastaReplica:
    """One replica: the app is built on the replica, after Ray has given it its CPUs or GPU."""

    def __init__(self, args: ServeArgs) -> None:
        self.args = args

    def __serve_build_asgi_app__(self) -> FastAPI:
        return replica_app(self.args, serve.get_replica_context().replica_tag)


def deployment(args: ServeArgs) -> Application:
    """The Serve application: ``args.replicas`` replicas, each with its GPUs or one CPU."""
    resources = {"num_gpus": args.gpus_per_replica} if args.gpus_per_replica else {"num_cpus": 1}
    return PastaReplica.options(num_replicas=args.replicas, ray_actor_options=resources).bind(args)


def build(args: dict[str, str]) -> Application:
    """The app builder of ``serve run pasta_rag.server.ray_serve:build model=default replicas=2``.

    The ``key=value`` pairs are ServeArgs' fields; a misspelt key or a bad value stops the run with
    pydantic's message naming it.
    """
    return deployment(ServeArgs.model_validate(args))


def run(args: ServeArgs, *, host: str, port: int, ray_address: str | None) -> None:
    """Start (or join, with ``ray_address``) Ray, put Serve's proxy on ``host:port``, serve until Ctrl-C."""
    import ray

    ray.init(address=ray_address)
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment(args), blocking=True)
