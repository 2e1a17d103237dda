"""Ask the compliance gate about one lead, as the campaign engine and the dialer do."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime

from crm.compliance import service
from crm.compliance.schemas import VerdictOut
from crm.deps import CurrentLead, DbSession
from crm.enums import Channel

router = APIRouter(prefix="/leads", tags=["compliance"])


@router.get("/{lead_id}/compliance", response_model=VerdictOut)
def get_compliance(
    lead: CurrentLead,
    db: DbSession,
    channel: Channel = Channel.call,
    automated: Annotated[
        bool, Query(description="An AI/artificial voice or a bot, not a person")
    ] = True,
    at: Annotated[
        AwareDatetime | None, Query(description="The moment to check; now if unset")
    ] = None,
) -> VerdictOut:
    """May the lead be contacted on `channel` at `at`, and if not, why and when next?"""
    verdict = service.check_contact(db, lead=lead, channel=channel, automated=automated, at=at)
    return VerdictOut.from_verdict(verdict)
