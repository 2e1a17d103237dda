"""The 8-stage pipeline as data: which stage may follow which.

All transition rules live here, blind to who asks (a broker, the agent, a rule), so one
function decides and every caller gets the same answer and the same allowed list.
"""

from __future__ import annotations

from enum import StrEnum


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
