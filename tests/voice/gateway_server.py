"""The real gateway on loopback, for tests that phone it as Twilio would.

`running_gateway` serves the real ASGI app (`voice_gateway.app.create_app`) with uvicorn
on 127.0.0.1, on a port the OS picked, in a background thread with its own event loop,
against the test PostgreSQL database that tests/conftest.py created. Providers are the
fakes, chosen through the same environment variables an operator would set; every
settings, token, admission and runtime cache is cleared before the server starts and
again after it stops, so each test sees the configuration it asked for and leaves none
behind.

The runtime (`VoiceRuntime`) is built before the first call and exposed, so a test can
read what the fake telephony recorded or swap a provider for one that fails on cue.
The server thread shares the process with the test, so the gateway's log records reach
pytest's `caplog`.

Helpers for the CRM side: a broker owning a fresh Twilio number (`make_line`), and
`wait_for`, which polls a condition until it holds (an event, not a timing: a generous
deadline only turns a hang into a failure).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from sqlalchemy import select

from agent import config as agent_config
from crm import config as crm_config
from crm.actor import Actor
from crm.brokers import service as broker_service
from crm.calls.models import Call, CallTurn
from crm.db import session_scope
from voice_gateway import admission as admission_module
from voice_gateway import config as gateway_config
from voice_gateway import metrics as metrics_module
from voice_gateway import runtime as runtime_module
from voice_gateway.providers.telephony_fake import FakeTelephony
from voice_gateway.runtime import VoiceRuntime
from voice_gateway.session import SessionConfig
from voice_gateway.simulator.caller import CallOptions
from voice_gateway.twilio import tokens as tokens_module

AUTH_TOKEN = "gateway-test-auth-token-0123456789"
CALL_TOKEN_SECRET = "gateway-test-call-token-secret-0123456789"

#: Fake providers, short timings: a whole call takes a few seconds of wall time.
FAST_ENV: Mapping[str, str] = {
    "STT_PROVIDER": "fake",
    "TTS_PROVIDER": "fake",
    "TELEPHONY_PROVIDER": "fake",
    "LLM_PROVIDER": "fake",
    "VAD": "webrtc",
    "TWILIO_VALIDATE_SIGNATURES": "true",
    "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
    "CALL_TOKEN_SECRET": CALL_TOKEN_SECRET,
    "FAKE_STT_LATENCY_MS": "0",
    "FAKE_TTS_LATENCY_MS": "0",
    "FAKE_TTS_MS_PER_CHAR": "20",
    "FAKE_LLM_LATENCY_MS": "0",
    "FAKE_LLM_TOKEN_INTERVAL_MS": "0",
    "ENDPOINT_SILENCE_MS": "300",
    "BARGE_IN_MIN_MS": "120",
    "MAX_CONCURRENT_CALLS": "20",
    "TTS_CACHE_ON_DISK": "false",
}

def clear_caches() -> None:
    """Forget every cached settings object and process-wide singleton of the gateway."""
    for cached in (
        gateway_config.get_settings,
        agent_config.get_settings,
        crm_config.get_settings,
        admission_module.get_admission,
        tokens_module.get_call_tokens,
        metrics_module.get_metrics,
        runtime_module.get_runtime,
    ):
        cached.cache_clear()


@dataclass
class Gateway:
    """A running gateway: where it listens and the runtime its calls use."""

    base_url: str
    public_host: str
    runtime: VoiceRuntime
    recordings: Path

    @property
    def telephony(self) -> FakeTelephony:
        telephony = self.runtime.telephony
        assert isinstance(telephony, FakeTelephony)
        return telephony

    def options(self, *, to_number: str, from_number: str, **changes: Any) -> CallOptions:
        """How the simulator dials this server: signed, at its public host."""
        return CallOptions(
            to_number=to_number,
            from_number=from_number,
            public_host=self.public_host,
            auth_token=AUTH_TOKEN,
            **changes,
        )

    def tune_sessions(self, **changes: Any) -> None:
        """Every call from now on runs with these `SessionConfig` fields changed (the
        knobs with no setting of their own: reprompt count, tick, playback timeout...)."""
        base = self.runtime.session_config
        tuned: Callable[[], SessionConfig] = lambda: replace(base(), **changes)  # noqa: E731
        self.runtime.session_config = tuned  # type: ignore[method-assign]


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def running_gateway(tmp_path: Path, **env: str) -> Iterator[Gateway]:
    """The real app on 127.0.0.1:<free port> with `FAST_ENV` plus `env` (strings, as in
    the environment); stopped, and every cache cleared, on the way out."""
    from voice_gateway.app import create_app

    sock = _free_socket()
    port = sock.getsockname()[1]
    public_host = f"127.0.0.1:{port}"
    recordings = tmp_path / "recordings"
    values = {
        **FAST_ENV,
        "PUBLIC_HOST": public_host,
        "DATA_DIR": str(tmp_path / "data"),
        "RECORDINGS_DIR": str(recordings),
        **env,
    }
    with _environment(values):
        clear_caches()
        try:
            runtime = runtime_module.get_runtime()
            config = uvicorn.Config(
                create_app(),
                log_config=None,
                access_log=False,
                lifespan="off",
                ws="websockets",
                ws_ping_interval=None,
            )
            server = uvicorn.Server(config)
            thread = threading.Thread(
                target=server.run, kwargs={"sockets": [sock]}, name=f"gateway-{port}", daemon=True
            )
            thread.start()
            deadline = time.monotonic() + 10
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not start")
                time.sleep(0.01)
            try:
                yield Gateway(
                    base_url=f"http://{public_host}",
                    public_host=public_host,
                    runtime=runtime,
                    recordings=recordings,
                )
            finally:
                server.should_exit = True
                thread.join(timeout=15)
                if thread.is_alive():
                    server.force_exit = True
                    thread.join(timeout=5)
        finally:
            sock.close()
            clear_caches()


# -- the CRM side ----------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """A broker owning a Twilio number, and a caller number of its own for each test."""

    broker_id: int
    legal_name: str
    number: str
    caller: str


def random_number(prefix: str = "+3491") -> str:
    return f"{prefix}{random.randint(1_000_000, 9_999_999)}"


def make_line(*, legal_name: str | None = None, locale: str = "es") -> Line:
    """A committed broker with a fresh Twilio number; the caller is new to it (the voice
    webhook creates the lead on the first call)."""
    suffix = uuid.uuid4().hex[:8]
    number = random_number("+3491")
    name = legal_name or f"Inmobiliaria {suffix}"
    with session_scope() as db:
        broker = broker_service.create(
            db,
            name=f"Broker {suffix}",
            legal_name=name,
            locale=locale,
            twilio_numbers=[number],
            actor=Actor.system("tests"),
        )
        db.flush()
        broker_id = broker.id
    return Line(
        broker_id=broker_id, legal_name=name, number=number, caller=random_number("+3461")
    )


def call_by_sid(sid: str) -> Call | None:
    with session_scope() as db:
        call = db.scalars(select(Call).where(Call.twilio_call_sid == sid)).first()
        if call is not None:
            db.expunge(call)
        return call


def turns_of(call_id: int) -> list[CallTurn]:
    with session_scope() as db:
        turns = list(
            db.scalars(select(CallTurn).where(CallTurn.call_id == call_id).order_by(CallTurn.seq))
        )
        for turn in turns:
            db.expunge(turn)
        return turns


T = TypeVar("T")


async def wait_for(
    probe: Callable[[], T | None], *, what: str, timeout_s: float = 15.0, every_s: float = 0.05
) -> T:
    """`probe()`'s first truthy answer (run in a thread: it may query the database)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await asyncio.to_thread(probe)
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout_s:g} s")
        await asyncio.sleep(every_s)


async def ended_call(sid: str, *, timeout_s: float = 15.0) -> Call:
    """The call Twilio knows as `sid`, once the gateway's teardown has finished it."""

    def probe() -> Call | None:
        call = call_by_sid(sid)
        return call if call is not None and call.end_reason is not None else None

    return await wait_for(probe, what=f"call {sid} to end", timeout_s=timeout_s)


async def gather(*calls: Awaitable[T]) -> list[T]:
    return list(await asyncio.gather(*calls))
