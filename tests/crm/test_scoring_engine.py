"""The pure scoring engine: exact numbers with the default weights, then the edges.

Default weights make 100 points: qualification 25, engagement 20, recency 15, intent 15,
budget fit 10, stage 15; stage multipliers new 1.0 … negotiating 1.2.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm.leads.models import Financing, PropertyType, Timeline
from crm.pipeline.stages import Stage
from crm.scoring.engine import (
    EngagementCounts,
    LeadInputs,
    ScoreResult,
    round_score,
    score,
)
from crm.scoring.weights import (
    DEFAULT_WEIGHTS,
    Component,
    ComponentWeights,
    ScoringWeights,
    TargetPriceRange,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

EMPTY = LeadInputs(last_activity_at=NOW)

COMPLETE = LeadInputs(
    stage=Stage.qualified,
    budget_min=Decimal("200000"),
    budget_max=Decimal("300000"),
    budget_currency="EUR",
    areas=("Chamberí",),
    property_type=PropertyType.apartment,
    bedrooms=3,
    timeline=Timeline.within_3_months,
    financing=Financing.mortgage_preapproved,
    intent=1.0,
    last_contacted_at=NOW,
    last_activity_at=NOW,
    engagement=EngagementCounts(inbound_messages=4, answered_calls=2, notes=2),
)


def with_(base: LeadInputs, **changes: object) -> LeadInputs:
    from dataclasses import replace

    return replace(base, **changes)  # type: ignore[arg-type]


def points(result: ScoreResult) -> dict[str, float]:
    return {c.component.value: round(c.points, 4) for c in result.components}


def raw(result: ScoreResult, component: Component) -> float:
    return result.component(component).raw


# --- whole leads ----------------------------------------------------------------------


def test_empty_new_lead_scores_only_recency_neutral_intent_and_stage() -> None:
    result = score(EMPTY, DEFAULT_WEIGHTS, now=NOW)
    assert points(result) == {
        "qualification": 0.0,
        "engagement": 0.0,
        "recency": 15.0,
        "intent": 7.5,
        "budget_fit": 0.0,
        "stage": 1.5,
    }
    assert result.score == 24
    assert result.multiplier == 1.0
    assert result.fixed_reason is None


def test_complete_qualified_lead() -> None:
    result = score(COMPLETE, DEFAULT_WEIGHTS, now=NOW)
    # 25 + 20 + 15 + 15 + 10 + 15 * 0.5 = 92.5 points, × 1.05 for qualified = 97.125
    assert result.base == pytest.approx(92.5)
    assert result.multiplier == 1.05
    assert sum(c.points for c in result.components) == pytest.approx(97.125)
    assert result.score == 97


def test_score_rounds_half_up() -> None:
    # recency at one half-life: 7.5 + intent 7.5 + stage 1.5 = 16.5 → 17, not banker's 16
    lead = with_(EMPTY, last_activity_at=NOW - timedelta(days=14))
    assert score(lead, DEFAULT_WEIGHTS, now=NOW).score == 17
    assert round_score(16.5) == 17
    assert round_score(-3) == 0
    assert round_score(140.2) == 100


def test_multiplier_scales_every_component_and_is_clamped() -> None:
    lead = with_(
        COMPLETE,
        timeline=None,
        financing=None,
        bedrooms=None,
        intent=None,
        engagement=EngagementCounts(),
    )
    # qualification 3/6 → 12.5, recency 15, intent 7.5, budget 10, stage 7.5 = 52.5
    default = score(lead, DEFAULT_WEIGHTS, now=NOW)
    assert default.base == pytest.approx(52.5)
    assert default.score == 55  # × 1.05 = 55.125
    halved = ScoringWeights(stage_multipliers={Stage.qualified: 0.5})
    assert score(lead, halved, now=NOW).score == 26  # 26.25
    doubled = ScoringWeights(stage_multipliers={Stage.qualified: 2})
    result = score(lead, doubled, now=NOW)
    assert result.score == 100  # 105 clamped
    assert all(c.multiplier == 2 for c in result.components)
    assert result.component(Component.recency).points == pytest.approx(30)


def test_won_and_lost_scores_are_fixed_but_explained() -> None:
    won = score(with_(EMPTY, stage=Stage.won), DEFAULT_WEIGHTS, now=NOW)
    lost = score(with_(COMPLETE, stage=Stage.lost), DEFAULT_WEIGHTS, now=NOW)
    assert (won.score, lost.score) == (100, 0)
    assert won.fixed_reason == "won leads have a fixed score of 100"
    assert lost.to_dict()["fixed"] == {"score": 0, "reason": "lost leads have a fixed score of 0"}
    assert raw(lost, Component.qualification) == 1.0  # what the lead looked like stays visible


def test_stage_component_grows_along_the_funnel() -> None:
    values = [
        raw(score(with_(EMPTY, stage=stage), DEFAULT_WEIGHTS, now=NOW), Component.stage)
        for stage in (
            Stage.new,
            Stage.contacted,
            Stage.qualified,
            Stage.visit_scheduled,
            Stage.visited,
            Stage.negotiating,
        )
    ]
    assert values == [0.1, 0.25, 0.5, 0.7, 0.8, 0.9]


# --- per-broker weights ---------------------------------------------------------------


def test_weights_are_normalised_to_100_points() -> None:
    even = ComponentWeights(**{c.value: 1 for c in Component})
    assert even.points() == {c: pytest.approx(100 / 6) for c in Component}
    assert sum(DEFAULT_WEIGHTS.components.points().values()) == pytest.approx(100)


def test_broker_weights_change_the_result() -> None:
    lead = with_(EMPTY, intent=0.8)
    intent_only = ScoringWeights(
        components=ComponentWeights(
            qualification=0, engagement=0, recency=0, intent=3, budget_fit=0, stage=0
        )
    )
    default = score(lead, DEFAULT_WEIGHTS, now=NOW)
    custom = score(lead, intent_only, now=NOW)
    assert default.score == 29  # 15 + 0.8 * 15 + 1.5 = 28.5
    assert custom.score == 80
    assert custom.component(Component.intent).weight == 100
    assert custom.component(Component.recency).points == 0


# --- components -----------------------------------------------------------------------


def test_qualification_counts_known_fields_and_names_the_missing() -> None:
    lead = with_(COMPLETE, timeline=Timeline.unknown, financing=None)
    component = score(lead, DEFAULT_WEIGHTS, now=NOW).component(Component.qualification)
    assert component.raw == pytest.approx(4 / 6)
    assert component.explanation == (
        "4 of 6 qualification fields known; missing: timeline, financing"
    )
    assert component.details == {"known": 4, "missing": ["timeline", "financing"]}


def test_blank_areas_do_not_count_as_known() -> None:
    lead = with_(EMPTY, areas=("", "  "))
    assert raw(score(lead, DEFAULT_WEIGHTS, now=NOW), Component.qualification) == 0


def test_engagement_caps_each_kind() -> None:
    lots_of_messages = EngagementCounts(inbound_messages=40)
    component = score(
        with_(EMPTY, engagement=lots_of_messages), DEFAULT_WEIGHTS, now=NOW
    ).component(Component.engagement)
    assert component.raw == pytest.approx(0.4)
    assert component.explanation == (
        "40 inbound messages, 0 answered calls, 0 notes in the last 30 days "
        "(4 of 10 engagement points)"
    )
    one_each = EngagementCounts(inbound_messages=1, answered_calls=1, notes=1)
    component = score(with_(EMPTY, engagement=one_each), DEFAULT_WEIGHTS, now=NOW).component(
        Component.engagement
    )
    assert component.raw == pytest.approx(0.4)  # 1 + 2 + 1 points
    assert component.explanation.startswith("1 inbound message, 1 answered call, 1 note ")


def test_engagement_explanation_names_the_broker_window() -> None:
    weights = ScoringWeights(engagement_window_days=7)
    component = score(EMPTY, weights, now=NOW).component(Component.engagement)
    assert "in the last 7 days" in component.explanation


@pytest.mark.parametrize(("age_days", "expected"), [(0, 1.0), (14, 0.5), (28, 0.25), (7, 2**-0.5)])
def test_recency_halves_at_each_half_life(age_days: int, expected: float) -> None:
    lead = with_(EMPTY, last_contacted_at=NOW - timedelta(days=age_days))
    assert raw(score(lead, DEFAULT_WEIGHTS, now=NOW), Component.recency) == pytest.approx(expected)


def test_recency_half_life_is_the_brokers() -> None:
    lead = with_(EMPTY, last_contacted_at=NOW - timedelta(days=3))
    weights = ScoringWeights(recency_half_life_days=3)
    component = score(lead, weights, now=NOW).component(Component.recency)
    assert component.raw == pytest.approx(0.5)
    assert component.explanation == "last contact 3.0 days ago (half-life 3 days)"


def test_recency_prefers_last_contact_over_last_activity() -> None:
    lead = with_(
        EMPTY, last_contacted_at=NOW - timedelta(days=28), last_activity_at=NOW - timedelta(hours=1)
    )
    assert raw(score(lead, DEFAULT_WEIGHTS, now=NOW), Component.recency) == pytest.approx(0.25)
    never_contacted = with_(EMPTY, last_activity_at=NOW - timedelta(days=14))
    component = score(never_contacted, DEFAULT_WEIGHTS, now=NOW).component(Component.recency)
    assert component.raw == pytest.approx(0.5)
    assert component.explanation.startswith("no contact yet; last activity 14.0 days ago")


def test_recency_without_any_date_is_zero_and_future_dates_are_now() -> None:
    nothing = with_(EMPTY, last_activity_at=None)
    assert raw(score(nothing, DEFAULT_WEIGHTS, now=NOW), Component.recency) == 0
    future = with_(EMPTY, last_contacted_at=NOW + timedelta(days=2))
    assert raw(score(future, DEFAULT_WEIGHTS, now=NOW), Component.recency) == 1


@pytest.mark.parametrize(
    ("intent", "expected"), [(None, 0.5), (0.0, 0.0), (0.73, 0.73), (1.7, 1.0), (math.nan, 0.5)]
)
def test_intent_is_clamped_and_unknown_is_neutral(intent: float | None, expected: float) -> None:
    lead = with_(EMPTY, intent=intent)
    assert raw(score(lead, DEFAULT_WEIGHTS, now=NOW), Component.intent) == pytest.approx(expected)


def test_intent_explanations() -> None:
    unknown = score(EMPTY, DEFAULT_WEIGHTS, now=NOW).component(Component.intent)
    assert unknown.explanation == "no intent from a conversation yet; counted as neutral 0.5"
    known = score(with_(EMPTY, intent=0.8), DEFAULT_WEIGHTS, now=NOW).component(Component.intent)
    assert known.explanation == "intent 0.80 from the last conversation"


TARGET = ScoringWeights(
    target_price=TargetPriceRange(min=Decimal(200_000), max=Decimal(500_000), currency="EUR")
)


def budget(
    low: int | None,
    high: int | None,
    currency: str | None = "EUR",
    weights: ScoringWeights = TARGET,
) -> tuple[float, str]:
    lead = with_(
        EMPTY,
        budget_min=None if low is None else Decimal(low),
        budget_max=None if high is None else Decimal(high),
        budget_currency=currency,
    )
    component = score(lead, weights, now=NOW).component(Component.budget_fit)
    return component.raw, component.explanation


def test_budget_without_a_target_range_fits_when_present_and_consistent() -> None:
    assert budget(None, None, weights=DEFAULT_WEIGHTS) == (0.0, "no budget known")
    assert budget(None, 300_000, weights=DEFAULT_WEIGHTS) == (
        1.0,
        "budget known: up to 300,000 EUR",
    )
    assert budget(400_000, 300_000, weights=DEFAULT_WEIGHTS) == (
        0.0,
        "budget minimum 400,000 is above its maximum 300,000",
    )
    assert budget(None, 0, weights=DEFAULT_WEIGHTS) == (0.0, "budget is not a positive amount")


def test_budget_overlapping_the_target_range_fits() -> None:
    assert budget(100_000, 600_000) == (
        1.0,
        "budget 100,000–600,000 EUR overlaps the target range 200,000–500,000 EUR",
    )
    assert budget(450_000, None)[0] == 1.0
    assert budget(None, 200_000)[0] == 1.0


def test_budget_outside_the_target_range_fits_by_distance() -> None:
    assert budget(100_000, 150_000) == (
        0.75,
        "budget 100,000–150,000 EUR is below the target range 200,000–500,000 EUR",
    )
    assert budget(1_000_000, None) == (
        0.5,
        "budget from 1,000,000 EUR is above the target range 200,000–500,000 EUR",
    )


def test_budget_in_another_currency_is_neutral_and_missing_currency_is_assumed() -> None:
    assert budget(100_000, 150_000, currency="USD") == (
        0.5,
        "budget in USD cannot be compared with the target range in EUR; counted as neutral 0.5",
    )
    fit, explanation = budget(100_000, 300_000, currency=None)
    assert fit == 1.0
    assert explanation.endswith("(currency assumed EUR)")
    assert budget(100_000, 150_000, currency=" eur ")[0] == 0.75


# --- the breakdown --------------------------------------------------------------------


def test_breakdown_is_json_and_explains_every_component() -> None:
    breakdown = score(COMPLETE, DEFAULT_WEIGHTS, now=NOW).to_dict()
    assert json.loads(json.dumps(breakdown)) == breakdown
    assert breakdown["version"] == 1
    assert breakdown["score"] == 97
    assert breakdown["stage"] == "qualified"
    assert breakdown["base"] == 92.5
    assert breakdown["fixed"] is None
    assert [c["name"] for c in breakdown["components"]] == [c.value for c in Component]
    qualification = breakdown["components"][0]
    assert qualification == {
        "name": "qualification",
        "raw": 1.0,
        "weight": 25.0,
        "multiplier": 1.05,
        "points": 26.25,
        "explanation": "6 of 6 qualification fields known",
        "details": {"known": 6, "missing": []},
    }


# --- bounds under random inputs -------------------------------------------------------

amounts = st.one_of(st.none(), st.decimals(min_value=-10, max_value=10**12, places=2))
# hypothesis takes naive bounds and attaches `timezones` to what it draws
moments = st.one_of(
    st.none(),
    st.datetimes(
        min_value=datetime(2000, 1, 1),  # noqa: DTZ001
        max_value=datetime(2040, 1, 1),  # noqa: DTZ001
        timezones=st.just(UTC),
    ),
)
counts = st.integers(min_value=0, max_value=10_000)
weight = st.floats(min_value=0, max_value=1000)

random_inputs = st.builds(
    LeadInputs,
    stage=st.sampled_from(Stage),
    budget_min=amounts,
    budget_max=amounts,
    budget_currency=st.sampled_from([None, "EUR", "USD", "eur", ""]),
    areas=st.lists(st.text(max_size=5), max_size=3).map(tuple),
    property_type=st.one_of(st.none(), st.sampled_from(PropertyType)),
    bedrooms=st.one_of(st.none(), st.integers(0, 10)),
    timeline=st.one_of(st.none(), st.sampled_from(Timeline)),
    financing=st.one_of(st.none(), st.sampled_from(Financing)),
    intent=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    last_contacted_at=moments,
    last_activity_at=moments,
    engagement=st.builds(EngagementCounts, counts, counts, counts),
)


@st.composite
def random_weights(draw: st.DrawFn) -> ScoringWeights:
    values = draw(st.lists(weight, min_size=6, max_size=6).filter(lambda ws: any(ws)))
    target = draw(
        st.one_of(
            st.none(),
            st.tuples(st.integers(0, 10**9), st.integers(0, 10**9)).map(
                lambda pair: TargetPriceRange(
                    min=Decimal(min(pair)), max=Decimal(max(pair)), currency="EUR"
                )
            ),
        )
    )
    return ScoringWeights(
        components=ComponentWeights(**dict(zip((c.value for c in Component), values, strict=True))),
        recency_half_life_days=draw(st.floats(min_value=0.01, max_value=3650)),
        engagement_window_days=draw(st.integers(1, 365)),
        stage_multipliers=draw(
            st.dictionaries(
                st.sampled_from([s for s in Stage if s not in (Stage.won, Stage.lost)]),
                st.floats(min_value=0, max_value=2),
            )
        ),
        target_price=target,
    )


@settings(max_examples=300, deadline=None)
@given(inputs=random_inputs, weights=random_weights(), now=moments.filter(lambda m: m is not None))
def test_score_stays_within_bounds(
    inputs: LeadInputs, weights: ScoringWeights, now: datetime
) -> None:
    result = score(inputs, weights, now=now)
    assert 0 <= result.score <= 100
    for component in result.components:
        assert 0 <= component.raw <= 1
        assert component.points >= 0
    if result.fixed_reason is None:
        assert result.score == round_score(sum(c.points for c in result.components))
        assert sum(c.weight for c in result.components) == pytest.approx(100)
    json.dumps(result.to_dict())
