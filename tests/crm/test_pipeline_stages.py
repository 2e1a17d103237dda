"""The transition table and the rot thresholds: pure data and pure functions."""

from __future__ import annotations

import itertools

import pytest

from crm.pipeline.stages import (
    CLOSED_STAGES,
    DEFAULT_ROT_DAYS,
    FUNNEL,
    FUNNEL_STEPS,
    OPEN_STAGES,
    ROTTING_STAGES,
    TRANSITIONS,
    InvalidRotDays,
    Stage,
    TransitionError,
    check_rot_days,
    check_transition,
    is_forward,
    ordered,
    rot_overrides,
    rot_thresholds,
    stage_rank,
)

S = Stage

#: The product's table, written out by hand so a change to TRANSITIONS must be deliberate.
EXPECTED: dict[Stage, set[Stage]] = {
    S.new: {S.contacted, S.qualified, S.visit_scheduled, S.visited, S.negotiating, S.won, S.lost},
    S.contacted: {S.new, S.qualified, S.visit_scheduled, S.visited, S.negotiating, S.won, S.lost},
    S.qualified: {S.new, S.contacted, S.visit_scheduled, S.visited, S.negotiating, S.won, S.lost},
    S.visit_scheduled: {S.new, S.contacted, S.qualified, S.visited, S.negotiating, S.won, S.lost},
    S.visited: {S.new, S.contacted, S.qualified, S.visit_scheduled, S.negotiating, S.won, S.lost},
    S.negotiating: {S.new, S.contacted, S.qualified, S.visit_scheduled, S.visited, S.won, S.lost},
    S.won: set(),
    S.lost: {S.contacted},
}
ALL_PAIRS = list(itertools.product(Stage, Stage))


def test_the_table_covers_every_stage_and_matches_the_product() -> None:
    assert set(TRANSITIONS) == set(Stage)
    assert {stage: set(targets) for stage, targets in TRANSITIONS.items()} == EXPECTED


def test_funnel_order_and_stage_sets() -> None:
    assert (
        S.new,
        S.contacted,
        S.qualified,
        S.visit_scheduled,
        S.visited,
        S.negotiating,
        S.won,
    ) == FUNNEL
    assert set(FUNNEL) - {S.won} == OPEN_STAGES
    assert {S.won, S.lost} == CLOSED_STAGES
    assert (
        (S.new, S.contacted),
        (S.contacted, S.qualified),
        (S.qualified, S.visit_scheduled),
        (S.visit_scheduled, S.visited),
        (S.visited, S.negotiating),
        (S.negotiating, S.won),
    ) == FUNNEL_STEPS
    assert [stage_rank(s) for s in FUNNEL] == list(range(7))
    assert stage_rank(S.lost) == 7
    assert ordered(set(Stage)) == [*FUNNEL, S.lost]


@pytest.mark.parametrize(("current", "target"), [(c, t) for c, t in ALL_PAIRS if t in EXPECTED[c]])
def test_every_allowed_transition_passes(current: Stage, target: Stage) -> None:
    check_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"), [(c, t) for c, t in ALL_PAIRS if t not in EXPECTED[c]]
)
def test_every_other_pair_is_refused_with_the_allowed_list(current: Stage, target: Stage) -> None:
    with pytest.raises(TransitionError) as caught:
        check_transition(current, target)
    error = caught.value
    assert (error.current, error.target) == (current, target)
    assert error.allowed == ordered(EXPECTED[current])
    assert f"cannot move from {current.value} to {target.value}" in str(error)


def test_staying_put_is_not_a_transition() -> None:
    for stage in Stage:
        with pytest.raises(TransitionError):
            check_transition(stage, stage)


def test_refusal_messages_name_the_allowed_stages() -> None:
    with pytest.raises(TransitionError, match=r"allowed: contacted$"):
        check_transition(S.lost, S.qualified)
    with pytest.raises(TransitionError, match=r"allowed: none \(final stage\)$"):
        check_transition(S.won, S.lost)


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS)
def test_is_forward(current: Stage, target: Stage) -> None:
    expected = (
        current in OPEN_STAGES and target in FUNNEL and FUNNEL.index(target) > FUNNEL.index(current)
    )
    assert is_forward(current, target) is expected


# --- rot thresholds -------------------------------------------------------------------


def test_defaults_cover_every_open_stage_and_no_closed_one() -> None:
    assert set(DEFAULT_ROT_DAYS) == OPEN_STAGES == ROTTING_STAGES
    assert {
        S.new: 2,
        S.contacted: 5,
        S.qualified: 7,
        S.visit_scheduled: 3,
        S.visited: 5,
        S.negotiating: 7,
    } == DEFAULT_ROT_DAYS


def test_check_rot_days_accepts_open_stages_in_range() -> None:
    assert check_rot_days({"new": 1, "negotiating": 365}) == {S.new: 1, S.negotiating: 365}
    assert check_rot_days({}) == {}


def test_check_rot_days_reports_every_problem_at_once() -> None:
    with pytest.raises(InvalidRotDays) as caught:
        check_rot_days(
            {
                "new": 0,
                "contacted": 366,
                "qualified": "7",
                "visited": True,
                "visit_scheduled": 2.5,
                "won": 3,
                "lost": 3,
                "cold": 3,
                "negotiating": 10,
            }
        )
    problems = dict(caught.value.problems)
    assert set(problems) == {
        "new",
        "contacted",
        "qualified",
        "visited",
        "visit_scheduled",
        "won",
        "lost",
        "cold",
    }
    assert problems["new"] == problems["contacted"] == "must be between 1 and 365 days"
    assert problems["qualified"] == problems["visited"] == "must be a whole number of days"
    assert problems["visit_scheduled"] == "must be a whole number of days"
    assert problems["won"] == "won is a closed stage and never rots"
    assert problems["cold"].startswith("unknown stage; choose from: new, contacted")


def test_thresholds_merge_overrides_over_defaults() -> None:
    assert rot_thresholds(None) == DEFAULT_ROT_DAYS
    assert rot_thresholds({}) == DEFAULT_ROT_DAYS
    merged = rot_thresholds({"new": 1, "negotiating": 30})
    assert merged == {**DEFAULT_ROT_DAYS, S.new: 1, S.negotiating: 30}


def test_stored_overrides_that_no_longer_validate_fall_back_to_defaults() -> None:
    stored: dict[str, object] = {"new": 0, "cold": 4, "won": 9, "visited": "x", "qualified": 9}
    assert rot_overrides(stored) == {S.qualified: 9}
    assert rot_thresholds(stored) == {**DEFAULT_ROT_DAYS, S.qualified: 9}


def test_overrides_come_back_in_funnel_order() -> None:
    assert list(rot_overrides({"negotiating": 3, "new": 4, "visited": 5})) == [
        S.new,
        S.visited,
        S.negotiating,
    ]
