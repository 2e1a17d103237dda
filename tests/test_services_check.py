"""`./dev`: the service checks answer clearly, and a stopped Redis really gets started.

The functions are exercised by sourcing the script (its main part only prints usage for
`help`), on ports nothing else uses, so the services the suite itself runs on are never
touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "dev"
BASH = shutil.which("bash") or "/bin/bash"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _dev_function(
    script: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `script` in bash after sourcing ./dev, so it can call the script's functions."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TEST_")}
    return subprocess.run(  # noqa: S603 - our own script
        [BASH, "-c", f"source {DEV} help >/dev/null\n{script}"],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_usage_and_unknown_commands() -> None:
    shown = subprocess.run(  # noqa: S603
        [BASH, str(DEV), "--help"], capture_output=True, text=True, check=False, timeout=30
    )
    assert shown.returncode == 0
    assert "./dev demo" in shown.stdout
    assert "./dev test" in shown.stdout
    unknown = subprocess.run(  # noqa: S603
        [BASH, str(DEV), "deploy"], capture_output=True, text=True, check=False, timeout=30
    )
    assert unknown.returncode == 2
    assert "usage:" in unknown.stderr


def test_ci_runs_dev_test() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec bash ./dev test" in ci
    assert os.access(ROOT / ".ci" / "run", os.X_OK) or ci.startswith("#!/usr/bin/env bash")


def test_missing_postgresql_is_named_with_how_to_install(tmp_path: Path) -> None:
    result = _dev_function(f"PATH={tmp_path}; PG_PORT={_free_port()}; ensure_postgres")
    assert result.returncode == 1
    assert "PostgreSQL is not installed or not running" in result.stderr
    assert "apt-get install postgresql" in result.stderr
    assert "TEST_PG_ADMIN_URL" in result.stderr


def test_missing_redis_is_named_with_how_to_install(tmp_path: Path) -> None:
    result = _dev_function(f"PATH={tmp_path}; REDIS_PORT={_free_port()}; ensure_redis")
    assert result.returncode == 1
    assert "Redis is not installed or not running" in result.stderr
    assert "apt-get install redis-server" in result.stderr


def test_running_services_are_left_alone() -> None:
    """The suite's own PostgreSQL and Redis answer, so nothing is started."""
    result = _dev_function("ensure_postgres && ensure_redis")
    assert result.returncode == 0, result.stderr
    assert "PostgreSQL answers on 127.0.0.1:5432" in result.stdout
    assert "Redis answers on 127.0.0.1:6379" in result.stdout


@pytest.fixture
def stopped_redis_port() -> Iterator[int]:
    """A port where a Redis is 'installed but stopped'; whatever starts there is shut down."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed here; the missing-Redis test covers this")
    if os.geteuid() != 0:
        pytest.skip("./dev starts Redis with its data in /var/lib/redis, which needs root")
    port = _free_port()
    yield port
    # Never started, or shut down: either way the connection ends in an error.
    with contextlib.suppress(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2).shutdown(nosave=True)


def test_a_stopped_redis_is_started(stopped_redis_port: int) -> None:
    result = _dev_function(f"REDIS_PORT={stopped_redis_port}; ensure_redis")
    assert result.returncode == 0, result.stderr
    assert "Redis is installed but stopped; starting it" in result.stdout
    client = redis.Redis(host="127.0.0.1", port=stopped_redis_port, socket_connect_timeout=2)
    assert client.ping()
    assert client.config_get("save")["save"] == ""
    assert client.config_get("appendonly")["appendonly"] == "no"
