"""The gateway under test for `voiceagent bench voice`: a child process on one core.

The child is the real stack `voiceagent serve` runs (the ASGI app under uvicorn with
one worker, the CRM on SQLite or PostgreSQL, recordings on disk), with every setting the
benchmark depends on passed in its environment. It seeds the demo broker and lead into
its database, then serves. It is pinned to one core with `taskset -c` (util-linux) or,
without it, `os.sched_setaffinity` in the child before it starts.

The driver reads the server from outside only: /healthz until it answers, /metrics
(behind a METRICS_TOKEN of our own) for its error counters, call endings and active
calls, and the CRM's stored turns for its own latency breakdown, through an engine of
its own so this process never touches the CRM's cached settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from voice_gateway.bench_voice_figures import MetricKey, parse_metrics

_READY_TIMEOUT_S: Final = 60.0
_SETTLE_TIMEOUT_S: Final = 60.0
_STOP_TIMEOUT_S: Final = 15.0
_LOG_TAIL_LINES: Final = 30
ACTIVE_CALLS: Final = "voiceagent_active_calls"


class ServerError(Exception):
    """The gateway child could not be started, or stopped answering."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    auth_token: str
    metrics_token: str
    database_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def public_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_environment(
    settings: Mapping[str, str],
    *,
    port: int,
    database_url: str,
    data_dir: Path,
    auth_token: str,
    metrics_token: str,
) -> dict[str, str]:
    """Our environment with the gateway's settings for the run: fake providers, its own
    database, credentials and data directory, then `settings` (latencies, VAD, limits)."""
    env = dict(os.environ)
    env.update(
        {
            "ENVIRONMENT": "development",
            "DATABASE_URL": database_url,
            "DATA_DIR": str(data_dir),
            "RECORDINGS_DIR": str(data_dir / "recordings"),
            "STT_PROVIDER": "fake",
            "TTS_PROVIDER": "fake",
            "TELEPHONY_PROVIDER": "fake",
            "LLM_PROVIDER": "fake",
            "TWILIO_AUTH_TOKEN": auth_token,
            "TWILIO_VALIDATE_SIGNATURES": "true",
            "CALL_TOKEN_SECRET": secrets.token_urlsafe(32),
            "PUBLIC_HOST": f"127.0.0.1:{port}",
            "METRICS_TOKEN": metrics_token,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(settings)
    env.pop("REDIS_URL", None)  # post-call work stays in-process, as on the embedded default
    return env


def server_command(port: int, core: int | None) -> tuple[list[str], Callable[[], None] | None]:
    """The child's command line and, without taskset, the pinning to run in the child."""
    command = [sys.executable, "-m", "voice_gateway.bench_voice_server", "serve", str(port)]
    if core is None:
        return command, None
    taskset = shutil.which("taskset")
    if taskset is not None:
        return [taskset, "-c", str(core), *command], None

    def pin() -> None:
        os.sched_setaffinity(0, {core})

    return command, pin


def start_server(
    settings: Mapping[str, str],
    work_dir: Path,
    *,
    database_url: str | None,
    core: int | None,
) -> ServerProcess:
    """Start the child (it seeds its database, then serves); `wait_until_ready` next.
    Its log goes to work_dir/server.log, its data under work_dir/data."""
    port = free_port()
    data_dir = work_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite:///{(data_dir / 'bench.sqlite3').resolve()}"
    auth_token, metrics_token = secrets.token_hex(16), secrets.token_hex(16)
    env = server_environment(
        settings,
        port=port,
        database_url=url,
        data_dir=data_dir,
        auth_token=auth_token,
        metrics_token=metrics_token,
    )
    command, pin = server_command(port, core)
    log_path = work_dir / "server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=pin,
        )
    return ServerProcess(process, port, auth_token, metrics_token, url, log_path)


async def wait_until_ready(server: ServerProcess, http: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerError(
                f"the server exited with code {server.process.returncode}:\n{server.log_tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            response = await http.get(f"{server.base_url}/healthz", timeout=1.0)
            if response.status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise ServerError(f"the server did not answer within {_READY_TIMEOUT_S:.0f} s")


def stop_server(server: ServerProcess) -> None:
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def scrape(server: ServerProcess, http: httpx.AsyncClient) -> dict[MetricKey, float]:
    try:
        response = await http.get(
            f"{server.base_url}/metrics",
            headers={"Authorization": f"Bearer {server.metrics_token}"},
            timeout=10.0,
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise ServerError(f"cannot read the server's metrics: {exc}") from None
    return parse_metrics(response.text)


async def settle(server: ServerProcess, http: httpx.AsyncClient) -> dict[MetricKey, float]:
    """Wait until the server has no call left (teardowns write to the CRM after the
    simulator hangs up), and return the metrics as they then stand."""
    deadline = time.monotonic() + _SETTLE_TIMEOUT_S
    while True:
        metrics = await scrape(server, http)
        if metrics.get((ACTIVE_CALLS, ()), 0.0) <= 0 or time.monotonic() > deadline:
            return metrics
        await asyncio.sleep(0.2)


# -- the CRM's record ------------------------------------------------------------------------


def agent_breakdowns(database_url: str, call_ids: Collection[int]) -> list[dict[str, int]]:
    """The latency marks the server stored with the agent turns of `call_ids`."""
    if not call_ids:
        return []
    from sqlalchemy import select

    from crm.calls.models import CallTurn, TurnRole

    query = select(CallTurn.latency).where(
        CallTurn.call_id.in_(sorted(call_ids)), CallTurn.role == TurnRole.agent
    )
    with _reader(database_url) as connection:
        rows = connection.execute(query).scalars().all()
    found = []
    for row in rows:
        marks = json.loads(row) if isinstance(row, str) else row
        if isinstance(marks, dict) and marks:
            found.append({str(k): v for k, v in marks.items() if isinstance(v, int)})
    return found


@contextlib.contextmanager
def _reader(database_url: str) -> Iterator[Any]:
    from crm.db import make_engine

    engine = make_engine(database_url, pool_size=1)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


# -- cores ------------------------------------------------------------------------------------


@contextlib.contextmanager
def pinned(core: int | None) -> Iterator[None]:
    """Run the block on `core` (None: wherever), then restore the previous affinity."""
    if core is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def choose_cores(server_core: int, simulator_core: int) -> tuple[int | None, int | None, str]:
    """The server's core, the simulator's, and a warning ("" when all is well)."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None, "cannot pin processes on this platform: figures are not one core's"
    allowed = os.sched_getaffinity(0)
    for core in (server_core, simulator_core):
        if core not in allowed:
            raise ServerError(f"core {core} is not available (this process may use {allowed})")
    if server_core == simulator_core or len(allowed) < 2:
        return (
            server_core,
            server_core,
            ("the simulator shares the server's core: the figures are pessimistic"),
        )
    return server_core, simulator_core, ""


# -- the child ------------------------------------------------------------------------------------


def serve(port: int) -> None:
    """Seed the demo broker and lead into the configured database, then run exactly what
    `voiceagent serve` runs."""
    from voice_gateway.cli import serve as voiceagent_serve
    from voice_gateway.demo import prepare_demo

    prepare_demo()  # migrates, and creates the broker owning the demo number once
    voiceagent_serve(host="127.0.0.1", port=port, workers=1)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        sys.exit("usage: python -m voice_gateway.bench_voice_server serve PORT")
