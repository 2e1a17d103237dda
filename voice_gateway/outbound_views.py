"""`POST /api/v1/calls`: a broker asks the gateway to phone one of its leads now.

It sits beside the CRM's `GET /api/v1/calls` (same resource, same tenancy deps), but
lives in the gateway because placing a call needs the gateway's telephony, tokens and
admission counter, and `crm` never imports the gateway. The route is `async`: the
Twilio request runs on the event loop, the database work in a worker thread
(`voice_gateway.outbound.place_call`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from crm import phones
from crm.calls.schemas import CallOut
from crm.calls.views import call_out
from crm.config import get_settings as get_crm_settings
from crm.deps import Auth, DbSession
from crm.errors import problem_response
from voice_gateway.admission import get_admission
from voice_gateway.config import get_settings
from voice_gateway.outbound import (
    IDEMPOTENCY_KEY_MAX,
    CallRequest,
    Dialing,
    OverCapacity,
    place_call,
)
from voice_gateway.providers.base import Telephony
from voice_gateway.twilio.tokens import get_call_tokens

router = APIRouter(prefix="/calls", tags=["calls"])


class OutboundCallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lead_id: int = Field(gt=0, description="The broker's lead to phone.")
    from_number: str | None = Field(
        default=None,
        max_length=32,
        description="E.164 of one of the broker's numbers; default: its first number.",
    )

    @field_validator("from_number")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return phones.normalize(value, get_crm_settings().default_region)
        except phones.InvalidPhoneNumber as exc:
            raise ValueError(f"not a phone number (E.164 like +34910000001): {exc}") from None


def _telephony() -> Telephony:
    from voice_gateway.runtime import get_runtime

    return get_runtime().telephony


def get_dialing() -> Dialing:
    """The process's settings, admission counter and tokens; the telephony provider is
    only built once a call is actually dialled."""
    return Dialing(
        settings=get_settings(),
        admission=get_admission(),
        tokens=get_call_tokens(),
        dialer=_telephony,
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CallOut,
    summary="Phone a lead now (outbound call)",
    responses={
        404: {"description": "No such lead for this broker (or it was deleted)."},
        409: {"description": "Do-not-call, refused by compliance, or already on a call."},
        422: {"description": "Bad body, or the broker has no number to call from."},
        502: {"description": "Twilio did not place the call; the call is ended as failed."},
        503: {"description": "Over this gateway's call limit (Retry-After), or not set up."},
    },
)
async def place_outbound_call(
    body: OutboundCallIn,
    auth: Auth,
    db: DbSession,
    request: Request,
    dialing: Annotated[Dialing, Depends(get_dialing)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=IDEMPOTENCY_KEY_MAX,
            description="A retry with the same key returns the same call, without dialling.",
        ),
    ] = None,
) -> CallOut | JSONResponse:
    """Accepted means Twilio is dialling: the call's progress arrives as it happens
    (`GET /api/v1/calls/{call_id}`)."""
    try:
        placed = await place_call(
            db,
            broker_id=auth.broker.id,
            request=CallRequest(
                lead_id=body.lead_id,
                from_number=body.from_number,
                idempotency_key=idempotency_key,
            ),
            actor=auth.actor,
            dialing=dialing,
        )
    except OverCapacity as exc:
        response = problem_response(exc, request)
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    return call_out(placed.call)
