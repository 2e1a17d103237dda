from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from crm.visits.models import VisitStatus

DURATION_MIN = 15
DURATION_MAX = 480
LOCATION_MAX = 300
PROPERTY_REF_MAX = 100
NOTES_MAX = 5000


class VisitCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lead_id: int
    scheduled_at: AwareDatetime = Field(description="Start, with its UTC offset; in the future.")
    duration_minutes: int = Field(default=45, ge=DURATION_MIN, le=DURATION_MAX)
    location: str | None = Field(default=None, max_length=LOCATION_MAX)
    property_ref: str | None = Field(default=None, max_length=PROPERTY_REF_MAX)
    notes: str | None = Field(default=None, max_length=NOTES_MAX)


class VisitUpdate(BaseModel):
    """Only the fields sent change; `location`, `property_ref` and `notes` may be null."""

    model_config = ConfigDict(extra="forbid")
    scheduled_at: AwareDatetime | None = None
    duration_minutes: int | None = Field(default=None, ge=DURATION_MIN, le=DURATION_MAX)
    location: str | None = Field(default=None, max_length=LOCATION_MAX)
    property_ref: str | None = Field(default=None, max_length=PROPERTY_REF_MAX)
    notes: str | None = Field(default=None, max_length=NOTES_MAX)
    status: VisitStatus | None = None

    @model_validator(mode="before")
    @classmethod
    def _required_not_null(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in ("scheduled_at", "duration_minutes", "status"):
                if name in data and data[name] is None:
                    raise ValueError(f"{name} cannot be null")
        return data


class VisitOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    lead_id: int
    scheduled_at: datetime
    ends_at: datetime
    duration_minutes: int
    location: str | None
    property_ref: str | None
    status: VisitStatus
    notes: str | None
    created_at: datetime
    updated_at: datetime
