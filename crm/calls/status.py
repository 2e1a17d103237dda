"""Which call status may follow which: Twilio's callbacks arrive late and out of order.

Statuses only move forward (queued → ringing → in_progress → a final one), and a final
status is never replaced, so a late `ringing` cannot reopen a finished call and a
`completed` cannot be overwritten by a stray `failed` for the same call.
"""

from __future__ import annotations

from crm.calls.models import CallStatus

FINAL_STATUSES: frozenset[CallStatus] = frozenset(
    {
        CallStatus.completed,
        CallStatus.busy,
        CallStatus.no_answer,
        CallStatus.failed,
        CallStatus.canceled,
    }
)

_RANK: dict[CallStatus, int] = {
    CallStatus.queued: 0,
    CallStatus.ringing: 1,
    CallStatus.in_progress: 2,
    **dict.fromkeys(FINAL_STATUSES, 3),
}


def is_final(status: CallStatus) -> bool:
    return status in FINAL_STATUSES


def accepts(current: CallStatus, new: CallStatus) -> bool:
    """True when a report of `new` should replace `current`; repeats and regressions don't."""
    if is_final(current):
        return False
    return _RANK[new] > _RANK[current]
