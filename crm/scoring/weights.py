"""A broker's scoring configuration: what each component is worth, and how fast leads cool.

Pure data with validation, shared by the engine (which reads it), the service (which
stores it in `Broker.scoring_weights`) and the API (which takes it as the PUT body), so a
setting that passes the API is exactly a setting the engine can use. Whatever a broker
leaves out follows the defaults below, including defaults changed in a later release.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crm.pipeline.stages import OPEN_STAGES, Stage, stage_rank


class Component(StrEnum):
    """The parts a score is made of, in the order the breakdown lists them."""

    qualification = "qualification"
    engagement = "engagement"
    recency = "recency"
    intent = "intent"
    budget_fit = "budget_fit"
    stage = "stage"


#: The score a closed lead gets whatever its inputs: a won deal needs no more work and
#: reads as converted; a lost lead must not be worked (reopening it rescores it).
FIXED_STAGE_SCORES: dict[Stage, int] = {Stage.won: 100, Stage.lost: 0}

#: Later stages are closer to money, so they boost the whole score, not only their part.
DEFAULT_STAGE_MULTIPLIERS: dict[Stage, float] = {
    Stage.new: 1.0,
    Stage.contacted: 1.0,
    Stage.qualified: 1.05,
    Stage.visit_scheduled: 1.1,
    Stage.visited: 1.15,
    Stage.negotiating: 1.2,
}

MAX_SCORE = 100

_Weight = Annotated[float, Field(ge=0, le=1000)]
_Multiplier = Annotated[float, Field(ge=0, le=2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ComponentWeights(_Strict):
    """Relative weights: only their proportions matter, they are scaled to sum to 100."""

    qualification: _Weight = 25
    engagement: _Weight = 20
    recency: _Weight = 15
    intent: _Weight = 15
    budget_fit: _Weight = 10
    stage: _Weight = 15

    @model_validator(mode="after")
    def _one_counts(self) -> ComponentWeights:
        if not any(self.raw(c) > 0 for c in Component):
            raise ValueError("at least one component weight must be above 0")
        return self

    def raw(self, component: Component) -> float:
        value: float = getattr(self, component.value)
        return value

    def points(self) -> dict[Component, float]:
        """Each component's maximum points, scaled so a perfect lead makes exactly 100."""
        total = sum(self.raw(c) for c in Component)
        return {c: MAX_SCORE * self.raw(c) / total for c in Component}


class TargetPriceRange(_Strict):
    """The prices the broker sells; a budget that overlaps them fits."""

    min: Decimal = Field(ge=0, max_digits=14, decimal_places=2)
    max: Decimal = Field(ge=0, max_digits=14, decimal_places=2)
    currency: str = Field(pattern="^[A-Z]{3}$", description="ISO 4217 code, e.g. EUR")

    @field_validator("currency", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _ordered(self) -> TargetPriceRange:
        if self.min > self.max:
            raise ValueError("min must not be above max")
        return self


class ScoringWeights(_Strict):
    components: ComponentWeights = ComponentWeights()
    recency_half_life_days: float = Field(
        default=14, gt=0, le=3650, description="Days after which the recency part halves."
    )
    engagement_window_days: int = Field(
        default=30, ge=1, le=365, description="How far back messages, calls and notes count."
    )
    stage_multipliers: dict[Stage, _Multiplier] = Field(
        default_factory=lambda: dict(DEFAULT_STAGE_MULTIPLIERS),
        description="Per open stage, 0..2; stages left out keep their default. "
        "Won and lost have fixed scores (100 and 0).",
    )
    target_price: TargetPriceRange | None = None

    @field_validator("stage_multipliers")
    @classmethod
    def _open_stages_merged(cls, value: dict[Stage, float]) -> dict[Stage, float]:
        closed = sorted(s.value for s in value if s not in OPEN_STAGES)
        if closed:
            raise ValueError(
                f"{', '.join(closed)}: closed stages have fixed scores "
                f"(won {FIXED_STAGE_SCORES[Stage.won]}, lost {FIXED_STAGE_SCORES[Stage.lost]})"
            )
        merged = {**DEFAULT_STAGE_MULTIPLIERS, **value}
        return dict(sorted(merged.items(), key=lambda item: stage_rank(item[0])))

    def multiplier(self, stage: Stage) -> float:
        return self.stage_multipliers.get(stage, 1.0)

    def stored(self) -> dict[str, Any] | None:
        """What goes in `Broker.scoring_weights`: only what differs from the defaults."""
        custom = self.model_dump(mode="json", exclude_defaults=True)
        multipliers = {
            stage: value
            for stage, value in custom.pop("stage_multipliers", {}).items()
            if DEFAULT_STAGE_MULTIPLIERS.get(Stage(stage)) != value
        }
        if multipliers:
            custom["stage_multipliers"] = multipliers
        return custom or None

    def flat(self) -> dict[str, Any]:
        """Dotted keys (`components.intent`), so an audit diff names the exact setting."""
        return _flatten(self.model_dump(mode="json"))


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and item:
            out.update(_flatten(item, f"{name}."))
        else:
            out[name] = item
    return out


DEFAULT_WEIGHTS = ScoringWeights()
