"""The lead score as a pure function of the lead's inputs, the broker's weights and `now`.

No database and no clock, so the same inputs always give the same score and every rule
below is unit-tested with exact numbers. The service gathers the inputs (one aggregate
query for engagement) and stores what this returns.

Each component yields a raw value in 0..1 and a one-line explanation; its points are
raw × its share of 100 (crm.scoring.weights) × the stage multiplier. The score is the
sum, clamped to 0..100 and rounded half up. Won and lost leads get fixed scores
(`FIXED_STAGE_SCORES`); their components are still worked out so the breakdown shows
what the lead looked like.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from crm.leads.models import Financing, PropertyType, Timeline
from crm.pipeline.stages import Stage
from crm.scoring.weights import FIXED_STAGE_SCORES, MAX_SCORE, Component, ScoringWeights

BREAKDOWN_VERSION = 1

#: How far along the funnel each stage is, for the stage component.
STAGE_VALUES: dict[Stage, float] = {
    Stage.new: 0.1,
    Stage.contacted: 0.25,
    Stage.qualified: 0.5,
    Stage.visit_scheduled: 0.7,
    Stage.visited: 0.8,
    Stage.negotiating: 0.9,
    Stage.won: 1.0,
    Stage.lost: 0.0,
}

#: Unknown intent (no conversation yet) sits halfway: neither a reward nor a penalty.
NEUTRAL_INTENT = 0.5

#: When a budget and the target range use different currencies there is no rate to
#: compare them with, so the fit is unknown: neutral, like unknown intent.
UNCOMPARABLE_BUDGET_FIT = 0.5


@dataclass(frozen=True, slots=True)
class EngagementRule:
    label: str
    points_each: int
    counted_up_to: int

    @property
    def max_points(self) -> int:
        return self.points_each * self.counted_up_to


#: Points per kind of engagement, each kind capped so one chatty channel (or a broker
#: writing many notes) cannot fill the component alone. 10 points make the component 1.
ENGAGEMENT_RULES: dict[str, EngagementRule] = {
    "inbound_messages": EngagementRule("inbound message", points_each=1, counted_up_to=4),
    "answered_calls": EngagementRule("answered call", points_each=2, counted_up_to=2),
    "notes": EngagementRule("note", points_each=1, counted_up_to=2),
}
ENGAGEMENT_MAX_POINTS = sum(rule.max_points for rule in ENGAGEMENT_RULES.values())

QUALIFICATION_FIELDS = ("budget", "areas", "property_type", "bedrooms", "timeline", "financing")


@dataclass(frozen=True, slots=True)
class EngagementCounts:
    """What the lead did in the engagement window (the service counts it in SQL)."""

    inbound_messages: int = 0
    answered_calls: int = 0
    notes: int = 0


@dataclass(frozen=True, slots=True)
class LeadInputs:
    """Everything the score depends on, detached from the ORM."""

    stage: Stage = Stage.new
    budget_min: Decimal | None = None
    budget_max: Decimal | None = None
    budget_currency: str | None = None
    areas: Sequence[str] = ()
    property_type: PropertyType | None = None
    bedrooms: int | None = None
    timeline: Timeline | None = None
    financing: Financing | None = None
    intent: float | None = None
    last_contacted_at: datetime | None = None
    last_activity_at: datetime | None = None
    engagement: EngagementCounts = field(default_factory=EngagementCounts)


@dataclass(frozen=True, slots=True)
class ComponentScore:
    component: Component
    raw: float
    weight: float
    multiplier: float
    explanation: str
    details: dict[str, Any]

    @property
    def points(self) -> float:
        return self.raw * self.weight * self.multiplier

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.component.value,
            "raw": round(self.raw, 4),
            "weight": round(self.weight, 2),
            "multiplier": self.multiplier,
            "points": round(self.points, 2),
            "explanation": self.explanation,
            "details": self.details,
        }


@dataclass(frozen=True, slots=True)
class ScoreResult:
    score: int
    stage: Stage
    multiplier: float
    components: tuple[ComponentScore, ...]
    fixed_reason: str | None = None

    @property
    def base(self) -> float:
        """Points before the stage multiplier."""
        return sum(c.raw * c.weight for c in self.components)

    def component(self, component: Component) -> ComponentScore:
        return next(c for c in self.components if c.component is component)

    def to_dict(self) -> dict[str, Any]:
        """The breakdown as stored in the snapshot and returned by the API."""
        return {
            "version": BREAKDOWN_VERSION,
            "score": self.score,
            "stage": self.stage.value,
            "base": round(self.base, 2),
            "multiplier": self.multiplier,
            "fixed": (
                None
                if self.fixed_reason is None
                else {"score": self.score, "reason": self.fixed_reason}
            ),
            "components": [c.to_dict() for c in self.components],
        }


def score(inputs: LeadInputs, weights: ScoringWeights, *, now: datetime) -> ScoreResult:
    """The lead's score and the breakdown that explains it."""
    multiplier = weights.multiplier(inputs.stage)
    shares = weights.components.points()
    parts: dict[Component, Callable[[], tuple[float, str, dict[str, Any]]]] = {
        Component.qualification: lambda: qualification(inputs),
        Component.engagement: lambda: engagement(inputs.engagement, weights),
        Component.recency: lambda: recency(inputs, weights, now=now),
        Component.intent: lambda: intent(inputs.intent),
        Component.budget_fit: lambda: budget_fit(inputs, weights),
        Component.stage: lambda: stage_value(inputs.stage),
    }
    components = []
    for component, compute in parts.items():
        raw, explanation, details = compute()
        components.append(
            ComponentScore(
                component=component,
                raw=_unit(raw),
                weight=shares[component],
                multiplier=multiplier,
                explanation=explanation,
                details=details,
            )
        )
    fixed = FIXED_STAGE_SCORES.get(inputs.stage)
    if fixed is not None:
        reason = f"{inputs.stage.value} leads have a fixed score of {fixed}"
        return ScoreResult(fixed, inputs.stage, multiplier, tuple(components), reason)
    total = sum(c.points for c in components)
    return ScoreResult(round_score(total), inputs.stage, multiplier, tuple(components))


def round_score(points: float) -> int:
    """Clamp to 0..100 and round half up (Python's round() would send 16.5 to 16)."""
    return math.floor(min(max(points, 0.0), float(MAX_SCORE)) + 0.5)


def qualification(inputs: LeadInputs) -> tuple[float, str, dict[str, Any]]:
    known = {
        "budget": inputs.budget_min is not None or inputs.budget_max is not None,
        "areas": any(a.strip() for a in inputs.areas),
        "property_type": inputs.property_type is not None,
        "bedrooms": inputs.bedrooms is not None,
        "timeline": inputs.timeline not in (None, Timeline.unknown),
        "financing": inputs.financing not in (None, Financing.unknown),
    }
    count = sum(known.values())
    missing = [name for name in QUALIFICATION_FIELDS if not known[name]]
    explanation = f"{count} of {len(QUALIFICATION_FIELDS)} qualification fields known"
    if missing:
        explanation += f"; missing: {', '.join(missing)}"
    return count / len(QUALIFICATION_FIELDS), explanation, {"known": count, "missing": missing}


def engagement(
    counts: EngagementCounts, weights: ScoringWeights
) -> tuple[float, str, dict[str, Any]]:
    points = 0
    said = []
    details: dict[str, Any] = {}
    for name, rule in ENGAGEMENT_RULES.items():
        count = max(getattr(counts, name), 0)
        points += min(count, rule.counted_up_to) * rule.points_each
        said.append(f"{count} {rule.label}{'' if count == 1 else 's'}")
        details[name] = count
    details["points"] = points
    explanation = (
        f"{', '.join(said)} in the last {weights.engagement_window_days} days "
        f"({points} of {ENGAGEMENT_MAX_POINTS} engagement points)"
    )
    return points / ENGAGEMENT_MAX_POINTS, explanation, details


def recency(
    inputs: LeadInputs, weights: ScoringWeights, *, now: datetime
) -> tuple[float, str, dict[str, Any]]:
    """Exponential decay from the last contact (or, never contacted, the last activity).

    Contact wins over activity because a note or a stage change written by the broker
    says nothing about how warm the lead is; a lead never contacted decays from its last
    activity (at first its creation), so fresh leads are called first.
    """
    half_life = weights.recency_half_life_days
    if inputs.last_contacted_at is not None:
        since, what = inputs.last_contacted_at, "last contact"
    elif inputs.last_activity_at is not None:
        since, what = inputs.last_activity_at, "no contact yet; last activity"
    else:
        return 0.0, "no contact or activity recorded", {"age_days": None}
    age_days = max((now - since).total_seconds(), 0.0) / 86_400
    raw = 0.5 ** (age_days / half_life)
    explanation = f"{what} {age_days:.1f} days ago (half-life {half_life:g} days)"
    return raw, explanation, {"age_days": round(age_days, 2), "half_life_days": half_life}


def intent(value: float | None) -> tuple[float, str, dict[str, Any]]:
    if value is None or math.isnan(value):
        explanation = f"no intent from a conversation yet; counted as neutral {NEUTRAL_INTENT:g}"
        return NEUTRAL_INTENT, explanation, {"intent": None}
    clamped = _unit(value)
    explanation = f"intent {clamped:.2f} from the last conversation"
    return clamped, explanation, {"intent": clamped}


def budget_fit(inputs: LeadInputs, weights: ScoringWeights) -> tuple[float, str, dict[str, Any]]:
    low, high = inputs.budget_min, inputs.budget_max
    currency = (inputs.budget_currency or "").strip().upper() or None
    if low is None and high is None:
        return 0.0, "no budget known", {}
    if (low is not None and low < 0) or (high is not None and high <= 0):
        return 0.0, "budget is not a positive amount", {}
    if low is not None and high is not None and low > high:
        return 0.0, f"budget minimum {_money(low)} is above its maximum {_money(high)}", {}
    target = weights.target_price
    budget = _range(low, high, currency)
    if target is None:
        return 1.0, f"budget known: {budget}", {}
    target_text = _range(target.min, target.max, target.currency)
    details: dict[str, Any] = {"target": target_text}
    if currency is not None and currency != target.currency:
        explanation = (
            f"budget in {currency} cannot be compared with the target range in "
            f"{target.currency}; counted as neutral {UNCOMPARABLE_BUDGET_FIT:g}"
        )
        return UNCOMPARABLE_BUDGET_FIT, explanation, details
    assumed = "" if currency is not None else f" (currency assumed {target.currency})"
    if high is not None and high < target.min:
        raw = float(high / target.min)
        explanation = f"budget {budget} is below the target range {target_text}{assumed}"
    elif low is not None and target.max < low:
        raw = float(target.max / low)
        explanation = f"budget {budget} is above the target range {target_text}{assumed}"
    else:
        raw = 1.0
        explanation = f"budget {budget} overlaps the target range {target_text}{assumed}"
    return raw, explanation, details


def stage_value(stage: Stage) -> tuple[float, str, dict[str, Any]]:
    return STAGE_VALUES[stage], f"stage {stage.value}", {"stage": stage.value}


def _unit(value: float) -> float:
    if math.isnan(value):
        return 0.0
    return min(max(value, 0.0), 1.0)


def _money(amount: Decimal) -> str:
    return f"{amount:,.0f}"


def _range(low: Decimal | None, high: Decimal | None, currency: str | None) -> str:
    suffix = f" {currency}" if currency else ""
    if low is not None and high is not None:
        text = _money(low) if low == high else f"{_money(low)}–{_money(high)}"
    elif high is not None:
        text = f"up to {_money(high)}"
    else:
        assert low is not None
        text = f"from {_money(low)}"
    return text + suffix
