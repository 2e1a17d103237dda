"""Pipeline metrics against hand-computed figures, on PostgreSQL and on SQLite.

One scenario of eight leads, written straight into the history with chosen times, is
worked out by hand below; the same functions must give the same figures on both
databases. Times are hours after T; the window is [T, T + 240 h).
"""

from __future__ import annotations

import itertools
import random
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

import crm.models  # noqa: F401  - every table on the metadata, for the SQLite file
from crm.audit.models import ActorType
from crm.brokers.models import Broker
from crm.db import Base, make_engine
from crm.errors import InvalidInput
from crm.leads.models import Lead
from crm.pipeline import metrics
from crm.pipeline.metrics import Conversion, StageCount, TimeInStage, Window
from crm.pipeline.models import LeadStageHistory
from crm.pipeline.stages import DEFAULT_ROT_DAYS, Stage
from crm.timeutil import utcnow
from tests.conftest import Tenant

S = Stage
T = datetime(2031, 3, 1, tzinfo=UTC)
WINDOW = Window(T, T + timedelta(hours=240))
H = 3600.0
_numbers = itertools.count(3_000_000)


def at(hours: float) -> datetime:
    return T + timedelta(hours=hours)


def write_lead(
    db: Session, broker_id: int, path: list[tuple[Stage, float]], *, deleted: bool = False
) -> Lead:
    """A lead whose stays follow `path` ((stage, entered at hour), ...), the last open."""
    lead = Lead(
        broker_id=broker_id,
        phone=f"+3460{next(_numbers)}",
        stage=path[-1][0],
        stage_entered_at=at(path[-1][1]),
        created_at=at(path[0][1]),
        last_activity_at=at(path[-1][1]),
        deleted_at=at(250) if deleted else None,
    )
    db.add(lead)
    db.flush()
    for i, (stage, hours) in enumerate(path):
        db.add(
            LeadStageHistory(
                broker_id=broker_id,
                lead_id=lead.id,
                stage=stage,
                from_stage=path[i - 1][0] if i else None,
                entered_at=at(hours),
                exited_at=at(path[i + 1][1]) if i + 1 < len(path) else None,
                reason="scenario",
                actor_type=ActorType.system,
                actor_id="tests",
            )
        )
    db.flush()
    return lead


def write_scenario(db: Session, broker_id: int) -> None:
    # L1 started before the window and went all the way to won inside it.
    write_lead(
        db,
        broker_id,
        [
            (S.new, -48),
            (S.contacted, -24),
            (S.qualified, 24),
            (S.visit_scheduled, 72),
            (S.visited, 120),
            (S.negotiating, 168),
            (S.won, 200),
        ],
    )
    # L2 was lost, reopened, and qualified only after the window (still counts as converted).
    write_lead(
        db,
        broker_id,
        [(S.new, 0), (S.contacted, 10), (S.lost, 40), (S.contacted, 100), (S.qualified, 300)],
    )
    # L3 skipped ahead, stepped back, and was lost.
    write_lead(
        db, broker_id, [(S.new, 20), (S.visit_scheduled, 30), (S.qualified, 50), (S.lost, 80)]
    )
    # L4 moved exactly at `until`: that entry is outside the window, its exit too.
    write_lead(db, broker_id, [(S.new, 230), (S.contacted, 240)])
    # L5 is soft-deleted: it must not count anywhere.
    write_lead(db, broker_id, [(S.new, 100), (S.contacted, 190), (S.qualified, 200)], deleted=True)
    # L6 did everything long before the window.
    write_lead(db, broker_id, [(S.new, -500), (S.contacted, -400)])
    # L7 was lost after the window.
    write_lead(db, broker_id, [(S.new, 5), (S.lost, 245)])
    # L8's first stay exited exactly at `since`: that exit is inside the window.
    write_lead(
        db, broker_id, [(S.new, -15), (S.contacted, 0), (S.qualified, 2), (S.negotiating, 3)]
    )


#: Live leads per stage now: L4 and L6 contacted, L2 qualified, L8 negotiating, L1 won,
#: L3 and L7 lost.
CURRENT = {
    S.new: 0,
    S.contacted: 2,
    S.qualified: 1,
    S.visit_scheduled: 0,
    S.visited: 0,
    S.negotiating: 1,
    S.won: 1,
    S.lost: 2,
}
#: Entries in [0, 240): new L2 L3 L4 L7; contacted L2 L2 L8; qualified L1 L3 L8;
#: visit_scheduled L1 L3; visited L1; negotiating L1 L8; won L1; lost L2 L3.
ENTERED = {
    S.new: 4,
    S.contacted: 3,
    S.qualified: 3,
    S.visit_scheduled: 2,
    S.visited: 1,
    S.negotiating: 2,
    S.won: 1,
    S.lost: 2,
}
#: Cohorts (first entry in the window) and who later reached the next stage or beyond:
#: new {L2 ✓, L3 ✓ (skipped), L4 ✓ (at until), L7 ✗}; contacted {L2 ✓ (after until),
#: L8 ✓}; qualified {L1 ✓, L3 ✗ (its visit was before), L8 ✓ (skipped)};
#: visit_scheduled {L1 ✓, L3 ✗ (went back)}; visited {L1 ✓}; negotiating {L1 ✓, L8 ✗}.
CONVERSION = [
    Conversion(S.new, S.contacted, entered=4, converted=3),
    Conversion(S.contacted, S.qualified, entered=2, converted=2),
    Conversion(S.qualified, S.visit_scheduled, entered=3, converted=2),
    Conversion(S.visit_scheduled, S.visited, entered=2, converted=1),
    Conversion(S.visited, S.negotiating, entered=1, converted=1),
    Conversion(S.negotiating, S.won, entered=2, converted=1),
]
#: Stays exited in [0, 240), in hours: new L2 10, L3 10, L8 15; contacted L1 48, L2 30,
#: L8 2; qualified L1 48, L3 30, L8 1; visit_scheduled L1 48, L3 20; visited L1 48;
#: negotiating L1 32; lost L2 60.
TIME_IN_STAGE = [
    TimeInStage(S.new, 3, mean_seconds=35 / 3 * H, median_seconds=10 * H),
    TimeInStage(S.contacted, 3, mean_seconds=80 / 3 * H, median_seconds=30 * H),
    TimeInStage(S.qualified, 3, mean_seconds=79 / 3 * H, median_seconds=30 * H),
    TimeInStage(S.visit_scheduled, 2, mean_seconds=34 * H, median_seconds=34 * H),
    TimeInStage(S.visited, 1, mean_seconds=48 * H, median_seconds=48 * H),
    TimeInStage(S.negotiating, 1, mean_seconds=32 * H, median_seconds=32 * H),
    TimeInStage(S.won, 0, mean_seconds=None, median_seconds=None),
    TimeInStage(S.lost, 1, mean_seconds=60 * H, median_seconds=60 * H),
]


def check_scenario(db: Session, broker_id: int) -> None:
    result = metrics.pipeline_metrics(db, broker_id=broker_id, window=WINDOW)
    assert (result.since, result.until) == (WINDOW.since, WINDOW.until)
    assert result.stages == [StageCount(s, CURRENT[s], ENTERED[s]) for s in Stage]
    assert result.conversion == CONVERSION
    assert [c.rate for c in result.conversion] == [0.75, 1.0, 2 / 3, 0.5, 1.0, 0.5]
    assert [t.stage for t in result.time_in_stage] == list(Stage)
    for got, want in zip(result.time_in_stage, TIME_IN_STAGE, strict=True):
        assert (got.stage, got.stays) == (want.stage, want.stays)
        assert got.median_seconds == pytest.approx(want.median_seconds, abs=0.01)
        assert got.mean_seconds == pytest.approx(want.mean_seconds, abs=0.01)
    assert (result.won, result.lost) == (1, 2)
    assert result.lost_from == {S.contacted: 1, S.qualified: 1}
    assert list(result.lost_from) == [S.contacted, S.qualified]


@dataclass
class Scenario:
    broker_id: int
    other_broker_id: int


@pytest.fixture
def pg_scenario(db: Session, tenant: Tenant, other_tenant: Tenant) -> Scenario:
    write_scenario(db, tenant.id)
    # Another broker's busy pipeline in the same window must not leak in.
    write_scenario(db, other_tenant.id)
    write_lead(db, other_tenant.id, [(S.new, 1), (S.won, 2)])
    return Scenario(tenant.id, other_tenant.id)


# --- PostgreSQL -----------------------------------------------------------------------


def test_metrics_match_the_hand_computed_figures_on_postgresql(
    db: Session, pg_scenario: Scenario
) -> None:
    assert db.get_bind().dialect.name == "postgresql"
    check_scenario(db, pg_scenario.broker_id)


def test_many_deleted_leads_are_excluded_by_subquery(
    db: Session, pg_scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "_DELETED_INLINE_MAX", 0)
    check_scenario(db, pg_scenario.broker_id)


def test_each_metric_function_stands_alone(db: Session, pg_scenario: Scenario) -> None:
    broker_id = pg_scenario.broker_id
    assert metrics.current_counts(db, broker_id=broker_id) == CURRENT
    assert metrics.conversion(db, broker_id=broker_id, window=WINDOW) == CONVERSION
    entries = metrics.entry_counts(db, broker_id=broker_id, window=WINDOW)
    assert entries[(S.lost, S.contacted)] == entries[(S.lost, S.qualified)] == 1
    assert sum(entries.values()) == sum(ENTERED.values())
    tis = metrics.time_in_stage(db, broker_id=broker_id, window=WINDOW)
    assert [t.stays for t in tis] == [t.stays for t in TIME_IN_STAGE]


def test_an_empty_window_gives_zeros_not_errors(db: Session, pg_scenario: Scenario) -> None:
    window = Window(at(-10_000), at(-9_000))
    result = metrics.pipeline_metrics(db, broker_id=pg_scenario.broker_id, window=window)
    assert [s.entered for s in result.stages] == [0] * 8
    assert [s.current for s in result.stages] == [CURRENT[s] for s in Stage]
    assert all(c.entered == c.converted == 0 and c.rate is None for c in result.conversion)
    assert all(t.stays == 0 and t.median_seconds is None for t in result.time_in_stage)
    assert (result.won, result.lost, result.lost_from) == (0, 0, {})


def _random_stays(db: Session, broker_id: int, rng: random.Random) -> list[float]:
    """Many one-stay-then-lost leads with repeated and odd durations; their seconds."""
    seconds: list[float] = []
    for _ in range(201):
        duration = (
            rng.choice([60.0, 3600.0, 5400.5, 86400.0])
            if rng.random() < 0.5
            else round(rng.uniform(1, 10 * 86400), 3)
        )
        start = rng.uniform(0, 100)
        write_lead(db, broker_id, [(S.visited, start), (S.lost, start + duration / H)])
        seconds.append(duration)
    return seconds


def test_median_and_mean_agree_with_python_on_many_stays(db: Session, tenant: Tenant) -> None:
    seconds = _random_stays(db, tenant.id, random.Random(7))
    window = Window(at(-1), at(24 * 400))
    (visited,) = [
        t
        for t in metrics.time_in_stage(db, broker_id=tenant.id, window=window)
        if t.stage is S.visited
    ]
    assert visited.stays == 201
    assert visited.median_seconds == pytest.approx(statistics.median(seconds), abs=0.01)
    assert visited.mean_seconds == pytest.approx(statistics.fmean(seconds), abs=0.01)
    # And with an even count, where the median is the mean of the middle two.
    write_lead(db, tenant.id, [(S.visited, 0), (S.lost, 1)])
    seconds.append(H)
    (even,) = [
        t
        for t in metrics.time_in_stage(db, broker_id=tenant.id, window=window)
        if t.stage is S.visited
    ]
    assert even.median_seconds == pytest.approx(statistics.median(seconds), abs=0.01)


# --- the window -------------------------------------------------------------------------


def test_resolve_window_defaults_and_refusals() -> None:
    now = datetime(2031, 1, 31, 12, tzinfo=UTC)
    assert metrics.resolve_window(None, None, now=now) == Window(now - timedelta(days=30), now)
    since = datetime(2031, 1, 1, tzinfo=UTC)
    assert metrics.resolve_window(since, None, now=now) == Window(since, now)
    until = datetime(2031, 1, 10, tzinfo=UTC)
    assert metrics.resolve_window(None, until, now=now) == Window(until - timedelta(days=30), until)
    for bad_since, bad_until in [(until, since), (since, since)]:
        with pytest.raises(InvalidInput) as caught:
            metrics.resolve_window(bad_since, bad_until, now=now)
        assert caught.value.errors[0]["field"] == "since"


# --- rotting ----------------------------------------------------------------------------


def _rotting_scenario(db: Session, broker_id: int, now: datetime) -> dict[str, Lead]:
    leads: dict[str, Lead] = {}
    for name, stage, days_idle in [
        ("new-fresh", S.new, 1.9),
        ("new-rotten", S.new, 2.1),
        ("visit-rotten", S.visit_scheduled, 3.5),
        ("negotiating-fresh", S.negotiating, 6),
        ("won-ancient", S.won, 400),
        ("lost-ancient", S.lost, 400),
    ]:
        lead = write_lead(db, broker_id, [(stage, -1000)])
        lead.last_activity_at = now - timedelta(days=days_idle)
        leads[name] = lead
    gone = write_lead(db, broker_id, [(S.new, -1000)], deleted=True)
    gone.last_activity_at = now - timedelta(days=50)
    db.flush()
    return leads


def check_rotting(db: Session, broker_id: int, now: datetime) -> None:
    leads = _rotting_scenario(db, broker_id, now)
    thresholds = dict(DEFAULT_ROT_DAYS)
    counts = metrics.rotting_counts(db, broker_id=broker_id, thresholds=thresholds, now=now)
    assert counts == {
        S.new: 1,
        S.contacted: 0,
        S.qualified: 0,
        S.visit_scheduled: 1,
        S.visited: 0,
        S.negotiating: 0,
    }
    stmt = metrics.rotting_leads(broker_id=broker_id, thresholds=thresholds, now=now)
    assert {lead.id for lead in db.scalars(stmt)} == {
        leads["new-rotten"].id,
        leads["visit-rotten"].id,
    }
    only_new = metrics.rotting_leads(
        broker_id=broker_id, thresholds=thresholds, now=now, stage=S.new
    )
    assert [lead.id for lead in db.scalars(only_new)] == [leads["new-rotten"].id]
    won = metrics.rotting_leads(broker_id=broker_id, thresholds=thresholds, now=now, stage=S.won)
    assert db.scalars(won).all() == []
    stricter = {**thresholds, S.negotiating: 5, S.new: 1}
    counts = metrics.rotting_counts(db, broker_id=broker_id, thresholds=stricter, now=now)
    assert (counts[S.new], counts[S.negotiating]) == (2, 1)


def test_rotting_on_postgresql(db: Session, tenant: Tenant) -> None:
    check_rotting(db, tenant.id, utcnow())


# --- SQLite: the same functions on the embedded default ------------------------------------


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'pipeline.sqlite3'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        yield session
    engine.dispose()


def _sqlite_broker(db: Session, name: str) -> int:
    broker = Broker(name=name, legal_name=name)
    db.add(broker)
    db.flush()
    return broker.id


def test_metrics_match_the_hand_computed_figures_on_sqlite(sqlite_db: Session) -> None:
    assert sqlite_db.get_bind().dialect.name == "sqlite"
    broker_id = _sqlite_broker(sqlite_db, "Mine")
    other_id = _sqlite_broker(sqlite_db, "Theirs")
    write_scenario(sqlite_db, broker_id)
    write_scenario(sqlite_db, other_id)
    sqlite_db.commit()
    check_scenario(sqlite_db, broker_id)


def test_median_and_rotting_on_sqlite(sqlite_db: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    broker_id = _sqlite_broker(sqlite_db, "Mine")
    seconds = _random_stays(sqlite_db, broker_id, random.Random(11))
    window = Window(at(-1), at(24 * 400))
    (visited,) = [
        t
        for t in metrics.time_in_stage(sqlite_db, broker_id=broker_id, window=window)
        if t.stage is S.visited
    ]
    assert visited.median_seconds == pytest.approx(statistics.median(seconds), abs=0.01)
    assert visited.mean_seconds == pytest.approx(statistics.fmean(seconds), abs=0.01)
    check_rotting(sqlite_db, _sqlite_broker(sqlite_db, "Rotting"), utcnow())
    monkeypatch.setattr(metrics, "_DELETED_INLINE_MAX", 0)
    scenario_broker = _sqlite_broker(sqlite_db, "Scenario")
    write_scenario(sqlite_db, scenario_broker)
    check_scenario(sqlite_db, scenario_broker)


def test_seconds_between_on_both_dialects(db: Session, sqlite_db: Session) -> None:
    from sqlalchemy import literal, select

    from crm.db import UTCDateTime

    start, end = at(0), at(36.5)
    for session in (db, sqlite_db):
        dialect = metrics.dialect_name(session)
        expr = metrics.seconds_between(
            dialect, literal(start, UTCDateTime()), literal(end, UTCDateTime())
        )
        assert session.scalar(select(expr)) == pytest.approx(36.5 * H, abs=0.01)
