from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from crm.audit.models import ActorType


class AuditLogOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    at: datetime
    actor_type: ActorType
    actor_id: str | None
    action: str
    object_type: str
    object_id: str | None
    diff: dict[str, Any] | None
    ip: str | None
    request_id: str | None
