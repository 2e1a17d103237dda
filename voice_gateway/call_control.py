"""A call-control channel: tell a live call session something, from any gateway process.

Twilio's answering-machine verdict arrives as a webhook, and behind a load balancer the
webhook may land on a different gateway process than the one holding the call's media
socket. So the webhook publishes to the call's channel and the session, wherever it
runs, subscribes to it for as long as it lives: Redis pub/sub when REDIS_URL is set
(production), an in-process fan-out when it is not (embedded mode, one process).

The interface is two calls: `publish(call_id, event)` and `subscribe(call_id)`, an async
iterator that unsubscribes when it is closed. Delivery is at most once, to the sessions
subscribed at that moment, which is what a hint about a live call needs; the durable
record (the Call's `answered_by`) is written by the webhook before it publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any, Final, Protocol

import redis.asyncio as aioredis

from crm.config import get_settings as get_crm_settings

log = logging.getLogger(__name__)

CHANNEL_PREFIX: Final = "voiceagent:call-control:"
MAX_MESSAGE_BYTES: Final = 1024


class ControlKind(StrEnum):
    answered_by = "answered_by"


@dataclass(frozen=True, slots=True)
class ControlEvent:
    kind: ControlKind
    value: str

    def encode(self) -> str:
        return json.dumps({"kind": self.kind.value, "value": self.value})

    @classmethod
    def decode(cls, raw: str | bytes) -> ControlEvent:
        """The event in `raw`, or ValueError (a message some other writer put there)."""
        if len(raw) > MAX_MESSAGE_BYTES:
            raise ValueError("control message too large")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"control message is not JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("value"), str):
            raise ValueError("control message is not {kind, value}")
        return cls(ControlKind(str(data.get("kind"))), data["value"])


def channel_of(call_id: int) -> str:
    return f"{CHANNEL_PREFIX}{call_id}"


class CallControl(Protocol):
    async def publish(self, call_id: int, event: ControlEvent) -> None: ...

    def subscribe(self, call_id: int) -> AsyncGenerator[ControlEvent, None]: ...


class LocalCallControl:
    """One process: subscribers' queues, fed from whichever thread or loop publishes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[
            int, set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[ControlEvent]]]
        ] = {}

    async def publish(self, call_id: int, event: ControlEvent) -> None:
        with self._lock:
            subscribers = list(self._subscribers.get(call_id, ()))
        for loop, queue in subscribers:
            with contextlib.suppress(RuntimeError):  # that loop has closed: no listener
                loop.call_soon_threadsafe(queue.put_nowait, event)

    async def subscribe(self, call_id: int) -> AsyncGenerator[ControlEvent, None]:
        entry = (asyncio.get_running_loop(), asyncio.Queue[ControlEvent]())
        with self._lock:
            self._subscribers.setdefault(call_id, set()).add(entry)
        try:
            while True:
                yield await entry[1].get()
        finally:
            with self._lock:
                subscribers = self._subscribers.get(call_id)
                if subscribers is not None:
                    subscribers.discard(entry)
                    if not subscribers:
                        del self._subscribers[call_id]


class RedisCallControl:
    """Redis pub/sub, one channel per call. The client is made on first use, in the
    event loop that uses it (redis.asyncio binds its connections to a loop)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._client: aioredis.Redis | None = None

    def __repr__(self) -> str:
        return "RedisCallControl()"  # the URL may carry a password

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(self._url, socket_connect_timeout=3)
        return self._client

    async def publish(self, call_id: int, event: ControlEvent) -> None:
        receivers = await self._redis().publish(channel_of(call_id), event.encode())
        log.info("call %s: %s published to %d subscriber(s)", call_id, event.kind, receivers)

    async def subscribe(self, call_id: int) -> AsyncGenerator[ControlEvent, None]:
        pubsub = self._redis().pubsub(ignore_subscribe_messages=True)
        channel = channel_of(call_id)
        await pubsub.subscribe(channel)
        try:
            async for message in pubsub.listen():
                event = _decoded(call_id, message)
                if event is not None:
                    yield event
        finally:
            try:
                await asyncio.shield(_close(pubsub, channel))
            except Exception:
                log.info("call %s: control channel closed uncleanly", call_id, exc_info=True)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _decoded(call_id: int, message: Any) -> ControlEvent | None:
    if not isinstance(message, dict) or message.get("type") != "message":
        return None
    try:
        return ControlEvent.decode(message.get("data") or b"")
    except ValueError as exc:
        log.warning("call %s: ignored a control message: %s", call_id, exc)
        return None


async def _close(pubsub: Any, channel: str) -> None:
    await pubsub.unsubscribe(channel)
    await pubsub.aclose()


def from_redis_url(url: str | None) -> CallControl:
    return RedisCallControl(url) if url else LocalCallControl()


@lru_cache
def get_call_control() -> CallControl:
    """This process's channel: Redis when REDIS_URL is set, else in-process."""
    return from_redis_url(get_crm_settings().redis_url)
