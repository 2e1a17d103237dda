"""Auto-advance rules, checked over every (stage, event) pair."""

from __future__ import annotations

import itertools

import pytest

from crm.pipeline.rules import EVENT_STAGE, PipelineEvent, advance_target
from crm.pipeline.stages import TRANSITIONS, Stage, stage_rank

S = Stage
E = PipelineEvent

#: For each stage, the events that move it and where to; every other event leaves it.
#: Written out by hand: a rule change must change this table too.
EXPECTED: dict[Stage, dict[PipelineEvent, Stage]] = {
    S.new: {
        E.contact_succeeded: S.contacted,
        E.qualification_completed: S.qualified,
        E.visit_booked: S.visit_scheduled,
        E.visit_completed: S.visited,
        E.offer_made: S.negotiating,
        E.deal_won: S.won,
    },
    S.contacted: {
        E.qualification_completed: S.qualified,
        E.visit_booked: S.visit_scheduled,
        E.visit_completed: S.visited,
        E.offer_made: S.negotiating,
        E.deal_won: S.won,
    },
    S.qualified: {
        E.visit_booked: S.visit_scheduled,
        E.visit_completed: S.visited,
        E.offer_made: S.negotiating,
        E.deal_won: S.won,
    },
    S.visit_scheduled: {
        E.visit_completed: S.visited,
        E.offer_made: S.negotiating,
        E.deal_won: S.won,
    },
    S.visited: {E.offer_made: S.negotiating, E.deal_won: S.won},
    S.negotiating: {E.deal_won: S.won},
    # Closed stages never move on their own: reopening a lost lead is a person's call.
    S.won: {},
    S.lost: {},
}


def test_every_event_names_a_stage() -> None:
    assert set(EVENT_STAGE) == set(PipelineEvent)
    assert {
        E.contact_succeeded: S.contacted,
        E.qualification_completed: S.qualified,
        E.visit_booked: S.visit_scheduled,
        E.visit_completed: S.visited,
        E.offer_made: S.negotiating,
        E.deal_won: S.won,
    } == EVENT_STAGE


@pytest.mark.parametrize(("stage", "event"), list(itertools.product(Stage, PipelineEvent)))
def test_advance_target_for_every_stage_and_event(stage: Stage, event: PipelineEvent) -> None:
    assert advance_target(stage, event) == EXPECTED[stage].get(event)


@pytest.mark.parametrize(("stage", "event"), list(itertools.product(Stage, PipelineEvent)))
def test_a_rule_never_moves_back_and_only_moves_where_the_table_allows(
    stage: Stage, event: PipelineEvent
) -> None:
    target = advance_target(stage, event)
    if target is not None:
        assert stage_rank(target) > stage_rank(stage)
        assert target in TRANSITIONS[stage]
        assert target is not S.lost


def test_rules_are_idempotent_once_applied() -> None:
    for stage, event in itertools.product(Stage, PipelineEvent):
        target = advance_target(stage, event)
        if target is not None:
            assert advance_target(target, event) is None
