"""The Celery app: `celery -A crm.worker worker` and `celery -A crm.worker beat`.

Redis (REDIS_URL) is both broker and result backend. Tasks take ids and reload rows, and
the schedule of campaign work lives in the database (see the campaign engine), so the
broker only carries short-lived "do this now" messages and beat is only a clock.

Task modules are listed by name in `TASK_MODULES` rather than imported here, so that a
task living in a higher package (`agent.tasks`, which summarizes calls with the LLM) is
included without `crm` importing `agent`.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals
from celery.schedules import crontab

from crm.config import CrmSettings, get_settings

APP_NAME = "voiceagent"

#: Modules whose tasks the worker registers at start; "agent.tasks" and
#: "crm.campaigns.tasks" join when they exist (tests/test_worker.py imports each one).
TASK_MODULES: tuple[str, ...] = ("crm.scoring.tasks",)

#: Periodic ticks, in UTC. Each task must be harmless if it runs twice: only one beat
#: runs, but a double tick around a redeploy must not double any work.
BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    # Time-based score inputs (recency) drift without any event; once a day catches them.
    "rescore-stale-leads": {
        "task": "crm.scoring.tasks.rescore_stale",
        "schedule": crontab(hour=3, minute=30),
    },
}

#: Used when REDIS_URL is unset (embedded mode runs its background work in-process):
#: importing the app and unit tests still work, and a real worker refuses to start.
IN_PROCESS_BROKER = "memory://"
IN_PROCESS_BACKEND = "cache+memory://"


def make_celery(settings: CrmSettings) -> Celery:
    """A Celery app configured from `settings` (tests build their own against Redis db 15)."""
    app = Celery(APP_NAME, include=list(TASK_MODULES))
    app.conf.update(
        broker_url=settings.redis_url or IN_PROCESS_BROKER,
        result_backend=settings.redis_url or IN_PROCESS_BACKEND,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        # Acknowledge on receipt. With acks_late a worker killed mid-task gets its message
        # redelivered, and a half-done send (a call placed, a WhatsApp sent) would be done
        # again to a real person. Recovery belongs to the database instead: claims carry a
        # lease that the sweeper returns to pending. A task proven idempotent may opt in
        # with @task(acks_late=True).
        task_acks_late=False,
        task_reject_on_worker_lost=False,
        # Redis redelivers unacked messages after this long; tasks here are short, and
        # nothing is scheduled through the broker's ETA far enough ahead to be repeated.
        broker_transport_options={"visibility_timeout": 3600},
        # One message at a time per process: long LLM or provider tasks must not hold
        # queued messages hostage while another worker idles.
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        result_expires=settings.celery_result_expires_s,
        task_track_started=True,
        beat_schedule=dict(BEAT_SCHEDULE),
    )
    return app


def refuse_in_process_broker(conf: Any, **_: Any) -> None:
    """A `celery worker` on the in-memory transport would wait forever for nothing.

    SystemExit, not an exception: Celery logs and swallows a signal handler's exceptions.
    """
    if str(conf.broker_url).startswith(IN_PROCESS_BROKER):
        raise SystemExit(
            "error: REDIS_URL is not set: a Celery worker needs Redis (e.g. "
            "REDIS_URL=redis://127.0.0.1:6379/0). The embedded mode runs without a worker."
        )


signals.celeryd_init.connect(refuse_in_process_broker, weak=False)

celery_app = make_celery(get_settings())
