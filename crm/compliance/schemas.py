"""What the compliance endpoint returns: the gate's verdict, as the senders see it."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from crm.compliance.policy import Disclosure, RefusalCode, Verdict


class RefusalOut(BaseModel):
    code: RefusalCode
    message: str


class VerdictOut(BaseModel):
    allowed: bool
    reasons: list[RefusalOut] = Field(description="Every rule that refuses; empty when allowed.")
    next_allowed_at: datetime | None = Field(
        description="Now when allowed; else the first moment every time rule allows (UTC); "
        "null when waiting cannot help (do-not-call, no consent)."
    )
    policy: str = Field(description="The jurisdiction policy applied, e.g. US-FL or ES.")
    time_zone: str = Field(description="The called party's zone the hours are read in.")
    local_time: datetime = Field(description="The moment checked, in that zone.")
    disclosures: list[Disclosure] = Field(description="What to say at the start, in order.")

    @classmethod
    def from_verdict(cls, verdict: Verdict) -> VerdictOut:
        return cls(
            allowed=verdict.allowed,
            reasons=[RefusalOut(code=r.code, message=r.message) for r in verdict.reasons],
            next_allowed_at=verdict.next_allowed_at,
            policy=verdict.policy,
            time_zone=verdict.time_zone,
            local_time=verdict.local_time,
            disclosures=list(verdict.disclosures),
        )
