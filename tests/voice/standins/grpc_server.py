"""What both Google stand-ins share: a gRPC server on loopback serving one method.

Each stand-in implements the vendor's service method; this part starts it on a free
port, stops it (releasing any held request first), and lets a test hold every request
as if the vendor hung, then release them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import grpc


class GrpcStandIn:
    def __init__(self, *, host: str) -> None:
        self.host = host
        self._gate = asyncio.Event()
        self._gate.set()
        self._server: grpc.aio.Server | None = None
        self._port = 0

    @property
    def address(self) -> str:
        if self._server is None:
            raise RuntimeError("stand-in not started")
        return f"{self.host}:{self._port}"

    async def _serve(
        self,
        service: str,
        method: str,
        handler: grpc.RpcMethodHandler[Any, Any],
        options: Sequence[tuple[str, int]] = (),
    ) -> str:
        self._server = grpc.aio.server(options=list(options))
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {method: handler}),)
        )
        self._port = self._server.add_insecure_port(f"{self.host}:0")
        await self._server.start()
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            self._gate.set()
            await self._server.stop(grace=None)
            self._server = None

    def hold(self) -> None:
        """Hold back every answer (as if Google hung; what is sent is still read) until
        `release`."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    async def start(self) -> str:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
