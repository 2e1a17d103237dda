"""Auto-advance rules: pure functions from (current stage, event) to a target stage.

A rule only ever moves a lead forward in the open funnel; going back, losing or
reopening is a person's decision (or an explicit `transition`), never a rule's.
"""

from __future__ import annotations

from enum import StrEnum

from crm.pipeline.stages import TRANSITIONS, Stage, is_forward


class PipelineEvent(StrEnum):
    contact_succeeded = "contact_succeeded"  # a call answered by the lead, a reply received
    qualification_completed = "qualification_completed"
    visit_booked = "visit_booked"
    visit_completed = "visit_completed"
    offer_made = "offer_made"
    deal_won = "deal_won"


#: The stage each event implies. Reaching it from further back may skip stages.
EVENT_STAGE: dict[PipelineEvent, Stage] = {
    PipelineEvent.contact_succeeded: Stage.contacted,
    PipelineEvent.qualification_completed: Stage.qualified,
    PipelineEvent.visit_booked: Stage.visit_scheduled,
    PipelineEvent.visit_completed: Stage.visited,
    PipelineEvent.offer_made: Stage.negotiating,
    PipelineEvent.deal_won: Stage.won,
}


def advance_target(current: Stage, event: PipelineEvent) -> Stage | None:
    """The stage `event` moves a lead in `current` to, or None if it should stay put."""
    target = EVENT_STAGE[event]
    if not is_forward(current, target) or target not in TRANSITIONS[current]:
        return None
    return target
