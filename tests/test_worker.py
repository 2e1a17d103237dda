"""The Celery app: configured from settings, and a real round trip through Redis."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from celery import Celery, current_app
from celery.app.utils import find_app
from celery.contrib.testing.worker import start_worker

from crm.config import CrmSettings, get_settings
from crm.worker import (
    APP_NAME,
    BEAT_SCHEDULE,
    IN_PROCESS_BROKER,
    TASK_MODULES,
    celery_app,
    make_celery,
    refuse_in_process_broker,
)
from tests import services

ROOT = Path(__file__).resolve().parent.parent


def _settings(monkeypatch: pytest.MonkeyPatch, redis_url: str | None) -> CrmSettings:
    monkeypatch.setenv("ENVIRONMENT", "test")
    if redis_url is None:
        monkeypatch.delenv("REDIS_URL", raising=False)
    else:
        monkeypatch.setenv("REDIS_URL", redis_url)
    return CrmSettings(_env_file=None)


def test_app_is_configured_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "redis://redis.internal:6379/3"
    app = make_celery(_settings(monkeypatch, url))
    conf = app.conf
    assert app.main == APP_NAME == "voiceagent"
    assert conf.broker_url == url
    assert conf.result_backend == url
    assert conf.task_serializer == conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    assert list(conf.result_accept_content) == ["json"]
    assert str(conf.timezone) == "UTC"
    assert conf.enable_utc is True
    assert conf.task_acks_late is False
    assert conf.task_reject_on_worker_lost is False
    assert conf.broker_transport_options == {"visibility_timeout": 3600}
    assert conf.worker_prefetch_multiplier == 1
    assert conf.result_expires == get_settings().celery_result_expires_s
    assert list(conf.include) == list(TASK_MODULES)
    assert conf.beat_schedule == BEAT_SCHEDULE


def test_without_redis_the_app_imports_but_a_worker_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = make_celery(_settings(monkeypatch, None))
    assert app.conf.broker_url == IN_PROCESS_BROKER
    with pytest.raises(SystemExit, match="REDIS_URL is not set"):
        refuse_in_process_broker(conf=app.conf)
    refuse_in_process_broker(conf=make_celery(_settings(monkeypatch, "redis://r:6379/0")).conf)


def test_celery_worker_without_redis_exits_with_the_reason(tmp_path: Path) -> None:
    """The real command: Celery swallows signal-handler exceptions, so this must exit."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    celery = Path(sys.executable).parent / "celery"
    result = subprocess.run(  # noqa: S603 - the venv's own celery
        [str(celery), "-A", "crm.worker", "worker", "--pool=solo"],
        cwd=tmp_path,
        env={**env, "ENVIRONMENT": "test", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert "REDIS_URL is not set" in result.stderr


def test_module_app_follows_the_process_settings() -> None:
    expected = get_settings().redis_url or IN_PROCESS_BROKER
    assert celery_app.conf.broker_url == expected


def test_celery_command_line_finds_the_app() -> None:
    """`celery -A crm.worker ...` (compose, README) resolves to this one app."""
    assert find_app("crm.worker") is celery_app


def test_task_modules_import_and_beat_names_registered_tasks() -> None:
    for module in TASK_MODULES:
        importlib.import_module(module)
    celery_app.loader.import_default_modules()
    for name, entry in BEAT_SCHEDULE.items():
        assert entry["task"] in celery_app.tasks, f"beat entry {name} names an unknown task"


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    try:
        client = services.redis_client()
    except RuntimeError as exc:
        unreachable = str(exc)
    else:
        yield client
        client.close()
        return
    pytest.fail(unreachable, pytrace=False)


@pytest.fixture
def redis_app(monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis) -> Iterator[Celery]:
    """The production configuration on Redis db 15, on a queue of its own.

    The queue name is unique so that two test runs sharing one Redis never take each
    other's messages; the keys this run made are deleted afterwards.
    """
    previous: Celery = cast(Any, current_app)._get_current_object()
    app = make_celery(_settings(monkeypatch, services.REDIS_URL))
    queue = f"voiceagent-test-{uuid.uuid4().hex}"
    app.conf.task_default_queue = queue
    # The in-process worker must not rewire this process's logging: later tests read
    # log records (caplog) from loggers Celery would otherwise have taken over.
    app.conf.worker_hijack_root_logger = False
    loggers = {
        name: (lg.disabled, lg.propagate, list(lg.handlers))
        for name, lg in logging.root.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    root = (logging.root.level, list(logging.root.handlers))
    yield app
    for name, (disabled, propagate, handlers) in loggers.items():
        lg = logging.getLogger(name)
        lg.disabled, lg.propagate, lg.handlers = disabled, propagate, handlers
    logging.root.setLevel(root[0])
    logging.root.handlers = root[1]
    previous.set_current()
    previous.set_default()
    stale = list(redis_client.scan_iter(match=f"*{queue}*"))
    if stale:
        redis_client.delete(*stale)


@pytest.mark.redis
def test_round_trip_through_redis_with_a_worker(
    redis_app: Celery, redis_client: redis.Redis
) -> None:
    @redis_app.task(name="tests.worker.multiply")
    def multiply(a: int, b: int) -> int:
        return a * b

    @redis_app.task(name="tests.worker.refuse")
    def refuse(reason: str) -> None:
        raise ValueError(reason)

    with start_worker(redis_app, perform_ping_check=False, shutdown_timeout=10):
        product = multiply.delay(6, 7)
        failed = refuse.delay("bad lead id")
        assert product.get(timeout=10) == 42
        with pytest.raises(ValueError, match="bad lead id"):
            failed.get(timeout=10)

    assert product.status == "SUCCESS"
    assert failed.status == "FAILURE"
    result_keys = [f"celery-task-meta-{product.id}", f"celery-task-meta-{failed.id}"]
    assert redis_client.exists(*result_keys) == 2, "results are stored in Redis"
    redis_client.delete(*result_keys)
