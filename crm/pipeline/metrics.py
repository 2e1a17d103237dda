"""Pipeline metrics as set-based SQL that runs on PostgreSQL and SQLite alike.

Every figure is aggregated in the database: Python only turns at most a few dozen
grouped rows into results. The queries are written for the benchmark's shape (100,000
leads, 1,000,000 history rows): the stays in the window are read twice, once grouped by
lead for the conversion and once grouped by (stage, from stage, duration) for entries
and time in stage, each time through an index that covers the columns read (see
crm.pipeline.models), so the cost follows the rows in the window rather than the table.

Definitions, all over a half-open window [since, until):

- *current*: live leads (not soft-deleted) in each stage right now; not windowed.
- *entered*: history rows (stays) whose `entered_at` falls in the window.
- *conversion A → B* (B the next funnel stage): the cohort is the leads that entered A
  at least once in the window, each counted once, at its first entry into A in the
  window. A cohort lead *converted* when, at any time after that entry (up to now, not
  only up to `until`), it entered B or any stage beyond B in the funnel, so a skip such
  as new → visit_scheduled counts for new → contacted. Lost is never "beyond"; going
  back and forth within the funnel converts only once a stage beyond A is entered.
- *time in stage*: stays that exited in the window, `exited_at - entered_at`; the mean
  and the median per stage (the median of an even count is the mean of the middle two).
- *won / lost*: entries into won and lost in the window; lost also by the stage it
  was lost from.

Soft-deleted leads are left out of every figure: deleting a lead (a duplicate, spam)
takes it out of the reports too, as brokers expect.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Select,
    and_,
    case,
    cast,
    extract,
    false,
    func,
    literal,
    null,
    or_,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.orm import Session

from crm.errors import InvalidInput, field_error
from crm.leads.models import Lead
from crm.listing import scoped
from crm.pipeline.models import LeadStageHistory as H
from crm.pipeline.stages import FUNNEL, FUNNEL_STEPS, ROTTING_STAGES, Stage, stage_rank
from crm.timeutil import ensure_utc, utcnow

#: The window a metrics request covers when it names no dates.
DEFAULT_WINDOW = timedelta(days=30)

#: Stages a conversion cohort can start from: every funnel stage that has a next one.
COHORT_STAGES: tuple[Stage, ...] = tuple(a for a, _ in FUNNEL_STEPS)

#: Stages that neither start a cohort nor count as "beyond" one (lost).
_OUTSIDE_FUNNEL: tuple[Stage, ...] = tuple(s for s in Stage if s not in FUNNEL)

#: Per-transaction PostgreSQL settings for the metrics queries. JIT compilation costs
#: more than it saves on queries this short, and sorting or hashing months of history
#: by lead needs more than the default 4 MB to stay in memory. A month and a year of
#: history need different plans, so each query is planned for its own window: the
#: driver prepares a statement run often enough, and the generic plan PostgreSQL then
#: settles on fits neither (measured: twice the time of the planned one for a year).
_PG_SETTINGS = (
    "SET LOCAL jit = off",
    "SET LOCAL work_mem = '64MB'",
    "SET LOCAL plan_cache_mode = force_custom_plan",
)

#: PostgreSQL settings for the conversion's grouping by lead only. Left alone, the
#: planner hashes a year's ~100,000 leads with a dozen aggregates each, and gives up the
#: parallel streaming plan because it prices merging the workers' partial groups as if
#: every worker saw every lead (a worker reads whole runs of leads off the index). The
#: streaming plan measured 140 ms against 220-240 ms for either alternative on the
#: benchmark's year (its serial form also beats hashing); a short window just sorts its
#: few stays by lead.
_PG_PER_LEAD_SETTINGS = {"enable_hashagg": "off", "parallel_tuple_cost": "0.01"}


# --- The window -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    since: datetime
    until: datetime


def resolve_window(
    since: datetime | None, until: datetime | None, *, now: datetime | None = None
) -> Window:
    """[since, until) from what the caller gave: `until` defaults to now, `since` to
    30 days before `until`. An empty or inverted window is the caller's mistake (422)."""
    end = ensure_utc(until) if until is not None else (now or utcnow())
    start = ensure_utc(since) if since is not None else end - DEFAULT_WINDOW
    if start >= end:
        raise InvalidInput(
            "since must be before until",
            errors=[field_error("since", "must be before until")],
        )
    return Window(start, end)


# --- Dialect-aware expressions --------------------------------------------------------


def dialect_name(db: Session) -> str:
    return db.get_bind().dialect.name


def duration_key(dialect: str, start: Any, end: Any) -> ColumnElement[Any]:
    """`end - start` in a form that groups and sorts exactly: an interval on PostgreSQL,
    float seconds on SQLite (whose timestamps are text)."""
    if dialect == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    result: ColumnElement[Any] = end - start
    return result


def key_seconds(dialect: str, key: Any) -> ColumnElement[float]:
    """Seconds, as a float, of a `duration_key`."""
    if dialect == "sqlite":
        return cast(key, Float)
    return cast(extract("epoch", key), Float)


def seconds_between(dialect: str, start: Any, end: Any) -> ColumnElement[float]:
    """`end - start` in seconds: extract(epoch …) on PostgreSQL, julianday on SQLite."""
    return key_seconds(dialect, duration_key(dialect, start, end))


@contextmanager
def _pg_settings(db: Session, settings: Mapping[str, str]) -> Iterator[None]:
    """`settings` for the statements run inside, on PostgreSQL only (SET LOCAL), then the
    values they replaced. A failed statement aborts the transaction, which drops them."""
    if dialect_name(db) != "postgresql":
        yield
        return
    names = list(settings)
    previous = db.execute(select(*(func.current_setting(name) for name in names))).one()
    db.execute(select(*(func.set_config(name, value, True) for name, value in settings.items())))
    yield
    db.execute(
        select(*(func.set_config(n, str(v), True) for n, v in zip(names, previous, strict=True)))
    )


def _tune(db: Session) -> None:
    if dialect_name(db) == "postgresql":
        for statement in _PG_SETTINGS:
            db.execute(text(statement))


#: Up to this many soft-deleted leads are excluded by listing their ids; past it, by a
#: subquery. Deleted leads are usually few, and a literal list keeps the big scans free
#: of a subplan, which would stop PostgreSQL from running them in parallel.
_DELETED_INLINE_MAX = 1000


def _live_history(db: Session, *, broker_id: int) -> ColumnElement[bool]:
    """A filter that keeps the history of leads that are not soft-deleted."""
    deleted = select(Lead.id).where(Lead.broker_id == broker_id, Lead.deleted_at.is_not(None))
    ids = db.scalars(deleted.limit(_DELETED_INLINE_MAX + 1)).all()
    if not ids:
        return true()
    if len(ids) <= _DELETED_INLINE_MAX:
        return H.lead_id.not_in(ids)
    return H.lead_id.not_in(deleted)


# --- Results --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageCount:
    stage: Stage
    current: int
    entered: int


@dataclass(frozen=True, slots=True)
class Conversion:
    from_stage: Stage
    to_stage: Stage
    entered: int
    converted: int

    @property
    def rate(self) -> float | None:
        return self.converted / self.entered if self.entered else None


@dataclass(frozen=True, slots=True)
class TimeInStage:
    stage: Stage
    stays: int
    mean_seconds: float | None
    median_seconds: float | None


@dataclass(frozen=True, slots=True)
class PipelineMetrics:
    since: datetime
    until: datetime
    stages: list[StageCount]
    conversion: list[Conversion]
    time_in_stage: list[TimeInStage]
    won: int
    lost: int
    lost_from: dict[Stage, int]


# --- The queries ----------------------------------------------------------------------


def current_counts(db: Session, *, broker_id: int) -> dict[Stage, int]:
    """Live leads per stage now (every stage present, zero when empty)."""
    rows = db.execute(
        select(Lead.stage, func.count())
        .where(Lead.broker_id == broker_id, Lead.deleted_at.is_(None))
        .group_by(Lead.stage)
    ).all()
    counts = dict.fromkeys(Stage, 0)
    counts.update({stage: int(n) for stage, n in rows})
    return counts


def entry_counts(
    db: Session, *, broker_id: int, window: Window, live: ColumnElement[bool] | None = None
) -> dict[tuple[Stage, Stage | None], int]:
    """Stays entered in the window, by (stage, the stage it was entered from)."""
    entries, _ = entries_and_time_in_stage(db, broker_id=broker_id, window=window, live=live)
    return entries


def conversion(
    db: Session, *, broker_id: int, window: Window, live: ColumnElement[bool] | None = None
) -> list[Conversion]:
    """Cohort conversion between consecutive funnel stages (defined in the module doc).

    One pass groups the stays since `since` by lead: the first entry into each
    cohort stage and the last entry into each funnel stage. A cohort lead converted when
    some stage beyond A was last entered after its first entry into A. Stays before
    `since` cannot be "after" a first entry inside the window, so they are not read.

    Lost stays are not read: they neither start a cohort nor count as beyond one. On
    PostgreSQL a long window's stays come in lead order from the covering (broker, lead,
    entered) index and each lead's group is closed as it passes, split across parallel
    workers whose partial groups merge in lead order (`_PG_PER_LEAD_SETTINGS`).
    """
    if live is None:
        live = _live_history(db, broker_id=broker_id)
    first = {a: func.min(H.entered_at).filter(H.stage == a).label(f"f_{a}") for a in COHORT_STAGES}
    last = {s: func.max(H.entered_at).filter(H.stage == s).label(f"l_{s}") for s in FUNNEL[1:]}
    per_lead = (
        select(H.lead_id, *first.values(), *last.values())
        .where(
            H.broker_id == broker_id,
            H.entered_at >= window.since,
            H.stage.not_in(_OUTSIDE_FUNNEL),
            live,
        )
        .group_by(H.lead_id)
        .subquery("per_lead")
    )
    columns: list[ColumnElement[Any]] = []
    for a in COHORT_STAGES:
        entered_a = per_lead.c[f"f_{a}"]
        in_cohort = entered_a < window.until
        later = or_(
            *(per_lead.c[f"l_{s}"] > entered_a for s in FUNNEL if stage_rank(s) > stage_rank(a))
        )
        columns.append(func.count().filter(in_cohort))
        columns.append(func.count().filter(and_(in_cohort, later)))
    with _pg_settings(db, _PG_PER_LEAD_SETTINGS):
        row = db.execute(select(*columns).select_from(per_lead)).one()
    return [
        Conversion(a, b, entered=int(row[2 * i] or 0), converted=int(row[2 * i + 1] or 0))
        for i, (a, b) in enumerate(FUNNEL_STEPS)
    ]


def time_in_stage(
    db: Session, *, broker_id: int, window: Window, live: ColumnElement[bool] | None = None
) -> list[TimeInStage]:
    """Mean and median time in each stage, over stays that exited in the window."""
    _, times = entries_and_time_in_stage(db, broker_id=broker_id, window=window, live=live)
    return times


def entries_and_time_in_stage(
    db: Session, *, broker_id: int, window: Window, live: ColumnElement[bool] | None = None
) -> tuple[dict[tuple[Stage, Stage | None], int], list[TimeInStage]]:
    """Entries by (stage, from stage) and time in stage, from one read of the stays.

    The stays read are those entered in the window (each an entry, and a duration when
    it also exited in the window) and those that exited in the window having entered
    outside it (a duration only): two index ranges, on `entered_at` and on `exited_at`,
    that never overlap, so each stay is read at most once. They are grouped once by
    (stage, from stage, duration), a few hundred groups at most when durations repeat;
    both figures are then taken from that small result.

    The median comes from a histogram: the groups are summed by exact duration, a
    running count per stage is taken over them in duration order, and the one or two
    durations holding the middle positions are averaged. Durations repeat often
    (scheduled steps, imports), so the groups are usually far fewer than the stays; at
    worst there is one per stay, the same work as the sort a percentile would need.

    With T stays in a stage, a group holding positions (c - n, c] holds a middle one
    exactly when 2(c - n) <= T <= 2c. Exact, and the same SQL on both databases (window
    functions; PostgreSQL's percentile_cont would sort every stay and has no SQLite twin).
    """
    if live is None:
        live = _live_history(db, broker_id=broker_id)
    dialect = dialect_name(db)
    duration = duration_key(dialect, H.entered_at, H.exited_at)
    exited_in = and_(H.exited_at >= window.since, H.exited_at < window.until)
    entered = select(
        H.stage.label("stage"),
        H.from_stage.label("from_stage"),
        case((exited_in, duration)).label("d"),
        literal(1).label("e"),
    ).where(
        H.broker_id == broker_id,
        H.entered_at >= window.since,
        H.entered_at < window.until,
        live,
    )
    exited_only = select(H.stage, null(), duration, literal(0)).where(
        H.broker_id == broker_id,
        exited_in,
        or_(H.entered_at < window.since, H.entered_at >= window.until),
        live,
    )
    stays = union_all(entered, exited_only).subquery("stays")
    groups = (
        select(
            stays.c.stage,
            stays.c.from_stage,
            stays.c.d,
            func.sum(stays.c.e).label("entered"),
            func.count(stays.c.d).label("exited"),
        )
        .group_by(stays.c.stage, stays.c.from_stage, stays.c.d)
        .cte("stay_groups")
    )
    hist = (
        select(groups.c.stage, groups.c.d, func.sum(groups.c.exited).label("n"))
        .where(groups.c.d.is_not(None))
        .group_by(groups.c.stage, groups.c.d)
        .subquery("hist")
    )
    running = (
        select(
            hist.c.stage,
            key_seconds(dialect, hist.c.d).label("s"),
            hist.c.n,
            func.sum(hist.c.n).over(partition_by=hist.c.stage, order_by=hist.c.d).label("c"),
            func.sum(hist.c.n).over(partition_by=hist.c.stage).label("t"),
        )
    ).subquery("running")
    middle = and_(2 * (running.c.c - running.c.n) <= running.c.t, running.c.t <= 2 * running.c.c)
    entry_rows = (
        select(
            literal(False).label("is_time"),
            groups.c.stage,
            groups.c.from_stage,
            func.sum(groups.c.entered).label("n"),
            cast(null(), Float).label("total"),
            cast(null(), Float).label("median"),
        )
        .group_by(groups.c.stage, groups.c.from_stage)
        .having(func.sum(groups.c.entered) > 0)
    )
    time_rows = select(
        literal(True),
        running.c.stage,
        null(),
        func.sum(running.c.n),
        cast(func.sum(running.c.s * running.c.n), Float),
        cast(func.avg(case((middle, running.c.s))), Float),
    ).group_by(running.c.stage)
    entries: dict[tuple[Stage, Stage | None], int] = {}
    found: dict[Stage, TimeInStage] = {}
    for is_time, stage, from_stage, n, total, median in db.execute(
        union_all(entry_rows, time_rows)
    ):
        if is_time:
            found[stage] = TimeInStage(stage, int(n), float(total) / int(n), float(median))
        else:
            entries[(stage, from_stage)] = int(n)
    times = [found.get(stage, TimeInStage(stage, 0, None, None)) for stage in Stage]
    return entries, times


def pipeline_metrics(db: Session, *, broker_id: int, window: Window) -> PipelineMetrics:
    """Every figure of the metrics endpoint for one broker and window.

    On PostgreSQL this sets `jit` and `work_mem` for the rest of the caller's transaction
    (SET LOCAL); callers are read-only requests, so nothing else runs under them.
    """
    _tune(db)
    live = _live_history(db, broker_id=broker_id)
    current = current_counts(db, broker_id=broker_id)
    entries, times = entries_and_time_in_stage(db, broker_id=broker_id, window=window, live=live)
    entered = dict.fromkeys(Stage, 0)
    for (stage, _from), n in entries.items():
        entered[stage] += n
    lost_pairs = [(f, n) for (s, f), n in entries.items() if s is Stage.lost and f is not None]
    lost_from = dict(sorted(lost_pairs, key=lambda pair: stage_rank(pair[0])))
    return PipelineMetrics(
        since=window.since,
        until=window.until,
        stages=[StageCount(s, current[s], entered[s]) for s in Stage],
        conversion=conversion(db, broker_id=broker_id, window=window, live=live),
        time_in_stage=times,
        won=entered[Stage.won],
        lost=entered[Stage.lost],
        lost_from=lost_from,
    )


# --- Rotting --------------------------------------------------------------------------


def rotting_condition(thresholds: Mapping[Stage, int], *, now: datetime) -> ColumnElement[bool]:
    """A lead rots when it sat in an open stage longer than that stage's threshold
    without any activity. One indexed range per stage on (broker, stage, activity)."""
    ranges = [
        and_(Lead.stage == stage, Lead.last_activity_at < now - timedelta(days=days))
        for stage, days in sorted(thresholds.items(), key=lambda item: stage_rank(item[0]))
        if stage in ROTTING_STAGES
    ]
    return or_(*ranges) if ranges else false()


def rotting_counts(
    db: Session, *, broker_id: int, thresholds: Mapping[Stage, int], now: datetime
) -> dict[Stage, int]:
    """Rotting live leads per open stage (zero when none)."""
    rows = db.execute(
        select(Lead.stage, func.count())
        .where(
            Lead.broker_id == broker_id,
            Lead.deleted_at.is_(None),
            rotting_condition(thresholds, now=now),
        )
        .group_by(Lead.stage)
    ).all()
    counts = {stage: 0 for stage in FUNNEL if stage in ROTTING_STAGES}
    counts.update({stage: int(n) for stage, n in rows})
    return counts


def rotting_leads(
    *,
    broker_id: int,
    thresholds: Mapping[Stage, int],
    now: datetime,
    stage: Stage | None = None,
) -> Select[Lead]:
    """The rotting live leads (of one stage, if given), for `crm.listing.page`."""
    chosen = {s: d for s, d in thresholds.items() if stage is None or s is stage}
    return scoped(Lead, broker_id).where(
        Lead.deleted_at.is_(None), rotting_condition(chosen, now=now)
    )
