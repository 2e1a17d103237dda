"""The 8-stage pipeline as data: which stage may follow which.

All transition rules live here, blind to who asks (a broker, the agent, a rule), so one
function decides and every caller gets the same answer and the same allowed list.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from itertools import pairwise


class Stage(StrEnum):
    new = "new"
    contacted = "contacted"
    qualified = "qualified"
    visit_scheduled = "visit_scheduled"
    visited = "visited"
    negotiating = "negotiating"
    won = "won"
    lost = "lost"


#: The forward order of the open funnel (lost sits outside it).
FUNNEL: tuple[Stage, ...] = (
    Stage.new,
    Stage.contacted,
    Stage.qualified,
    Stage.visit_scheduled,
    Stage.visited,
    Stage.negotiating,
    Stage.won,
)

OPEN_STAGES: frozenset[Stage] = frozenset(FUNNEL) - {Stage.won}
CLOSED_STAGES: frozenset[Stage] = frozenset({Stage.won, Stage.lost})

#: Consecutive funnel steps (new → contacted, …, negotiating → won): the conversion pairs.
FUNNEL_STEPS: tuple[tuple[Stage, Stage], ...] = tuple(pairwise(FUNNEL))

#: Allowed transitions. Forward moves may skip stages (a lead who books a visit on the
#: first call goes new → visit_scheduled); a step back within the open funnel is allowed
#: for corrections (a visit cancelled → qualified); lost is reachable from any open
#: stage and reopens only to contacted; won is final.
TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    stage: frozenset(s for s in FUNNEL if s != stage) | {Stage.lost} for stage in OPEN_STAGES
}
TRANSITIONS[Stage.won] = frozenset()
TRANSITIONS[Stage.lost] = frozenset({Stage.contacted})


class TransitionError(ValueError):
    """A move the pipeline does not allow; carries the allowed list for the answer."""

    def __init__(self, current: Stage, target: Stage) -> None:
        self.current = current
        self.target = target
        self.allowed = sorted(TRANSITIONS[current], key=stage_rank)
        allowed = ", ".join(s.value for s in self.allowed) or "none (final stage)"
        super().__init__(f"cannot move from {current.value} to {target.value}; allowed: {allowed}")


def stage_rank(stage: Stage) -> int:
    """Position in the funnel; lost ranks after won so sorting keeps it last."""
    return FUNNEL.index(stage) if stage in FUNNEL else len(FUNNEL)


def check_transition(current: Stage, target: Stage) -> None:
    """Raise `TransitionError` unless `current → target` is allowed."""
    if target not in TRANSITIONS[current]:
        raise TransitionError(current, target)


def is_forward(current: Stage, target: Stage) -> bool:
    """True when `target` is further down the open funnel than `current`."""
    if current in CLOSED_STAGES or target is Stage.lost:
        return False
    return stage_rank(target) > stage_rank(current)


def ordered(stages: frozenset[Stage] | set[Stage]) -> list[Stage]:
    """Stages in funnel order (lost last), so every answer lists them the same way."""
    return sorted(stages, key=stage_rank)


# --- Rotting: how long a lead may sit in a stage without activity -----------------------

#: Days without activity after which a lead in the stage is "rotting" (Pipedrive's term).
#: Early stages rot fast because a cold lead forgets it asked; a booked visit rots in
#: days because an unconfirmed visit is likely a no-show. Won and lost never rot.
DEFAULT_ROT_DAYS: dict[Stage, int] = {
    Stage.new: 2,
    Stage.contacted: 5,
    Stage.qualified: 7,
    Stage.visit_scheduled: 3,
    Stage.visited: 5,
    Stage.negotiating: 7,
}
ROT_DAYS_MIN = 1
ROT_DAYS_MAX = 365
ROTTING_STAGES: frozenset[Stage] = frozenset(DEFAULT_ROT_DAYS)


class InvalidRotDays(ValueError):
    """Rot thresholds a broker may not set; `problems` is `[(stage key, message)]`."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {message}" for key, message in problems))


def check_rot_days(values: Mapping[str, object]) -> dict[Stage, int]:
    """The broker's overrides, validated: open stages only, whole days in 1..365.

    Every bad entry is reported at once so a form can mark them all.
    """
    problems: list[tuple[str, str]] = []
    checked: dict[Stage, int] = {}
    for key, days in values.items():
        try:
            stage = Stage(key)
        except ValueError:
            known = ", ".join(s.value for s in ordered(set(ROTTING_STAGES)))
            problems.append((key, f"unknown stage; choose from: {known}"))
            continue
        if stage not in ROTTING_STAGES:
            problems.append((key, f"{stage.value} is a closed stage and never rots"))
            continue
        if isinstance(days, bool) or not isinstance(days, int):
            problems.append((key, "must be a whole number of days"))
            continue
        if not ROT_DAYS_MIN <= days <= ROT_DAYS_MAX:
            problems.append((key, f"must be between {ROT_DAYS_MIN} and {ROT_DAYS_MAX} days"))
            continue
        checked[stage] = days
    if problems:
        raise InvalidRotDays(problems)
    return checked


def rot_overrides(stored: Mapping[str, object] | None) -> dict[Stage, int]:
    """The broker's stored overrides that still validate, in funnel order.

    Read leniently: an entry that no longer validates (a stage renamed since, a value
    written by hand) is dropped, so old data can never break an endpoint.
    """
    kept: dict[Stage, int] = {}
    for key, days in (stored or {}).items():
        try:
            kept.update(check_rot_days({key: days}))
        except InvalidRotDays:
            continue
    return {stage: kept[stage] for stage in ordered(set(kept))}


def rot_thresholds(stored: Mapping[str, object] | None) -> dict[Stage, int]:
    """Days until rotting for each open stage: the broker's override, else the default."""
    return {**DEFAULT_ROT_DAYS, **rot_overrides(stored)}
