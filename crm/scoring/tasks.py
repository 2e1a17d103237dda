"""Bulk rescoring off the request path: Celery tasks, and the same work run in-process.

Tasks take ids and open their own session (the runners commit per batch). Both are safe
to run twice: a second run only stores one more snapshot per lead with the same score,
so a redelivered message or a double beat tick does no harm (hence `acks_late`).
"""

from __future__ import annotations

import logging

from crm.db import get_sessionmaker
from crm.scoring import service
from crm.worker import celery_app

log = logging.getLogger(__name__)


def run_rescore_broker(broker_id: int) -> int:
    """Rescore one broker's leads in a session of its own; how many were scored."""
    with get_sessionmaker()() as db:
        try:
            count = service.rescore_broker(db, broker_id=broker_id)
        except BaseException:
            db.rollback()
            raise
    log.info("rescored %d leads of broker %d", count, broker_id)
    return count


def rescore_broker_in_background(broker_id: int) -> None:
    """The embedded default's runner (a FastAPI background task): failures are logged.

    Whatever this misses, `rescore_stale` catches within a day.
    """
    try:
        run_rescore_broker(broker_id)
    except Exception:
        log.exception("rescoring broker %d after a weights change failed", broker_id)


def run_rescore_stale() -> int:
    with get_sessionmaker()() as db:
        try:
            count = service.rescore_stale(db)
        except BaseException:
            db.rollback()
            raise
    log.info("rescored %d leads whose score was over a day old", count)
    return count


@celery_app.task(name="crm.scoring.tasks.rescore_broker", acks_late=True)
def rescore_broker_task(broker_id: int) -> int:
    return run_rescore_broker(broker_id)


@celery_app.task(name="crm.scoring.tasks.rescore_stale", acks_late=True)
def rescore_stale_task() -> int:
    return run_rescore_stale()
