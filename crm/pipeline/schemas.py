from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from crm.audit.models import ActorType
from crm.listing import Page
from crm.pipeline.rules import PipelineEvent
from crm.pipeline.service import REASON_MAX
from crm.pipeline.stages import Stage


class StageChangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: Stage
    reason: str | None = Field(
        default=None,
        min_length=1,
        max_length=REASON_MAX,
        description="Why the lead moved; 'manual' when left out.",
    )


class StayOut(BaseModel):
    """One stay of a lead in a stage."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    stage: Stage
    from_stage: Stage | None
    entered_at: datetime
    exited_at: datetime | None
    reason: str | None
    actor_type: ActorType
    actor_id: str | None
    is_open: bool = Field(description="True for the current stay (not exited yet).")
    seconds_in_stage: float = Field(
        description="Exited minus entered; for the open stay, the time so far."
    )


class StageChangeOut(BaseModel):
    lead_id: int
    previous_stage: Stage
    stage: Stage
    stage_entered_at: datetime
    stay: StayOut


class TransitionOut(BaseModel):
    stage: Stage
    rank: int = Field(description="Position in the funnel; lost sorts last.")
    is_open: bool
    is_final: bool = Field(description="No transition leaves this stage.")
    allowed: list[Stage]
    rot_days_default: int | None = Field(description="None for stages that never rot.")


class StagesOut(BaseModel):
    funnel: list[Stage]
    stages: list[TransitionOut]
    auto_advance: dict[PipelineEvent, Stage] = Field(
        description="The stage each event moves a lead to, when that is forward."
    )


class StageCountOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    stage: Stage
    current: int = Field(description="Live leads in the stage now.")
    entered: int = Field(description="Entries into the stage within the window.")


class ConversionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    from_stage: Stage
    to_stage: Stage
    entered: int = Field(description="Leads whose first entry into from_stage is in the window.")
    converted: int = Field(description="Of those, leads that later reached to_stage or beyond.")
    rate: float | None = Field(description="converted / entered; None when nobody entered.")


class TimeInStageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    stage: Stage
    stays: int = Field(description="Stays that exited within the window.")
    mean_seconds: float | None
    median_seconds: float | None


class MetricsOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    since: datetime
    until: datetime
    stages: list[StageCountOut]
    conversion: list[ConversionOut]
    time_in_stage: list[TimeInStageOut]
    won: int = Field(description="Leads won within the window.")
    lost: int = Field(description="Leads lost within the window.")
    lost_from: dict[Stage, int] = Field(description="Losses in the window by the stage left.")


class RotStageOut(BaseModel):
    stage: Stage
    threshold_days: int
    rotting: int


class RottingLeadOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    full_name: str | None
    phone: str
    stage: Stage
    stage_entered_at: datetime
    last_activity_at: datetime
    days_inactive: int = Field(description="Whole days since the last activity.")


class RottingOut(BaseModel):
    as_of: datetime
    total: int
    stages: list[RotStageOut]
    leads: Page[RottingLeadOut] | None = Field(
        default=None, description="A page of the rotting leads, when include_leads=true."
    )


#: The PUT body: `{stage: days}`. Values are checked by the service, not here, so one
#: answer lists every bad entry (an unknown stage and an out-of-range value alike).
RotDaysIn = dict[str, Any]


class RotDaysOut(BaseModel):
    rot_days: dict[Stage, int] = Field(description="The thresholds in force, every open stage.")
    overrides: dict[Stage, int] = Field(description="The broker's own settings.")
    defaults: dict[Stage, int]
