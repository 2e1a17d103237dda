"""Visit statuses as data: a visit is scheduled until it is completed, cancelled or a
no-show, and a final status is never left (book a new visit instead)."""

from __future__ import annotations

from crm.visits.models import VisitStatus

TRANSITIONS: dict[VisitStatus, frozenset[VisitStatus]] = {
    VisitStatus.scheduled: frozenset(
        {VisitStatus.completed, VisitStatus.cancelled, VisitStatus.no_show}
    ),
    VisitStatus.completed: frozenset(),
    VisitStatus.cancelled: frozenset(),
    VisitStatus.no_show: frozenset(),
}

FINAL: frozenset[VisitStatus] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


class VisitTransitionError(ValueError):
    def __init__(self, current: VisitStatus, target: VisitStatus) -> None:
        self.current = current
        self.target = target
        self.allowed = sorted(s.value for s in TRANSITIONS[current])
        allowed = ", ".join(self.allowed) or "none (final status)"
        super().__init__(
            f"a {current.value} visit cannot become {target.value}; allowed: {allowed}"
        )


def check(current: VisitStatus, target: VisitStatus) -> None:
    """Raise unless `current → target` is allowed; staying put is always allowed."""
    if target is not current and target not in TRANSITIONS[current]:
        raise VisitTransitionError(current, target)
