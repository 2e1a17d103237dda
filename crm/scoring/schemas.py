"""What the scoring API returns; the PUT body is `crm.scoring.weights.ScoringWeights`."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from crm.pipeline.stages import Stage
from crm.scoring.models import ScoreSnapshot
from crm.scoring.weights import FIXED_STAGE_SCORES, Component, ScoringWeights


class ComponentOut(BaseModel):
    name: Component
    raw: float = Field(description="How much of this component the lead has, 0..1.")
    weight: float = Field(description="The component's share of 100 points.")
    multiplier: float = Field(description="The lead's stage multiplier.")
    points: float = Field(description="raw × weight × multiplier.")
    explanation: str
    details: dict[str, Any]


class FixedScoreOut(BaseModel):
    score: int
    reason: str


class BreakdownOut(BaseModel):
    version: int
    score: int
    stage: Stage
    base: float = Field(description="Points before the stage multiplier.")
    multiplier: float
    fixed: FixedScoreOut | None = Field(
        description="Set for won and lost leads, whose score does not come from the points."
    )
    components: list[ComponentOut]


class ScoreOut(BaseModel):
    """A lead's score at one moment, with its explanation."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    lead_id: int
    score: int
    trigger: str = Field(description="What asked for this computation, e.g. lead.update.")
    computed_at: datetime
    breakdown: BreakdownOut

    @classmethod
    def from_snapshot(cls, snapshot: ScoreSnapshot) -> ScoreOut:
        return cls.model_validate(snapshot)


class TargetPriceOut(BaseModel):
    min: Decimal
    max: Decimal
    currency: str


class WeightsOut(BaseModel):
    components: dict[Component, float] = Field(description="The weights as configured.")
    points: dict[Component, float] = Field(
        description="The most points each component can add: the weights scaled to sum to 100."
    )
    recency_half_life_days: float
    engagement_window_days: int
    stage_multipliers: dict[Stage, float]
    fixed_scores: dict[Stage, int]
    target_price: TargetPriceOut | None
    customised: bool = Field(description="False while the broker uses the defaults.")

    @classmethod
    def build(cls, weights: ScoringWeights, *, customised: bool) -> WeightsOut:
        return cls(
            components={c: weights.components.raw(c) for c in Component},
            points={c: round(p, 2) for c, p in weights.components.points().items()},
            recency_half_life_days=weights.recency_half_life_days,
            engagement_window_days=weights.engagement_window_days,
            stage_multipliers=weights.stage_multipliers,
            fixed_scores=FIXED_STAGE_SCORES,
            target_price=(
                None
                if weights.target_price is None
                else TargetPriceOut.model_validate(weights.target_price.model_dump())
            ),
            customised=customised,
        )


class RescoreMode(StrEnum):
    not_needed = "not_needed"
    in_process = "in_process"
    queued = "queued"


class WeightsUpdated(WeightsOut):
    rescore: RescoreMode = Field(
        description="How the broker's leads are being rescored with the new weights: after "
        "this response in this process (no Redis), queued for a Celery worker, or not at "
        "all because nothing changed."
    )
