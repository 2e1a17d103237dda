"""Leads: CRUD, filters, timeline, consent, do-not-call, CSV import.

Every route resolves the lead through `CurrentLead` (scoped to the caller's broker), so
another broker's lead, or a deleted one, is a 404 on every route, and commits once.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile, status
from pydantic import AwareDatetime

from crm import phones
from crm.config import get_settings
from crm.deps import Auth, CurrentBroker, CurrentLead, DbSession, Paging
from crm.enums import Language
from crm.errors import InvalidInput, PayloadTooLarge, field_error
from crm.leads import import_service, service
from crm.leads.models import ActivityKind
from crm.leads.schemas import (
    ActivityOut,
    ConsentCreate,
    ConsentOut,
    ConsentRevoke,
    DoNotCallIn,
    ImportReportOut,
    LeadCreate,
    LeadFilters,
    LeadOut,
    LeadUpdate,
    NoteCreate,
)
from crm.listing import Page
from crm.pipeline.stages import Stage

router = APIRouter(prefix="/leads", tags=["leads"])


def _split(values: list[str] | None) -> list[str]:
    """`?stage=new&stage=contacted` and `?stage=new,contacted` mean the same."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def get_filters(
    stage: Annotated[
        list[str] | None, Query(description="One or several stages (repeat or comma-separate)")
    ] = None,
    score_min: int | None = None,
    score_max: int | None = None,
    source: Annotated[str | None, Query(max_length=100)] = None,
    assigned_to: Annotated[str | None, Query(max_length=100)] = None,
    inactive_days: Annotated[
        int | None, Query(ge=1, le=3650, description="No activity for at least N days")
    ] = None,
    q: Annotated[
        str | None, Query(max_length=200, description="Search name, email and phone")
    ] = None,
    created_from: Annotated[AwareDatetime | None, Query(description="Inclusive")] = None,
    created_to: Annotated[AwareDatetime | None, Query(description="Exclusive")] = None,
    do_not_call: bool | None = None,
    language: Annotated[list[Language] | None, Query()] = None,
) -> LeadFilters:
    stages: list[Stage] = []
    for value in _split(stage):
        try:
            stages.append(Stage(value))
        except ValueError:
            raise InvalidInput(
                f"unknown stage {value!r}",
                errors=[field_error("stage", f"choose from: {', '.join(s.value for s in Stage)}")],
            ) from None
    if score_min is not None and score_max is not None and score_min > score_max:
        raise InvalidInput(
            "score_min is above score_max",
            errors=[field_error("score_min", "must not be above score_max")],
        )
    if created_from is not None and created_to is not None and created_from >= created_to:
        raise InvalidInput(
            "created_from is not before created_to",
            errors=[field_error("created_from", "must be before created_to")],
        )
    return LeadFilters(
        stages=tuple(dict.fromkeys(stages)),
        score_min=score_min,
        score_max=score_max,
        source=source,
        assigned_to=assigned_to,
        inactive_days=inactive_days,
        q=q,
        created_from=created_from,
        created_to=created_to,
        do_not_call=do_not_call,
        languages=tuple(language or ()),
    )


@router.post("", response_model=LeadOut, status_code=status.HTTP_201_CREATED)
def create_lead(body: LeadCreate, auth: Auth, db: DbSession) -> LeadOut:
    lead = service.create(db, broker_id=auth.broker.id, data=body, actor=auth.actor)
    db.commit()
    return LeadOut.model_validate(lead)


@router.get("", response_model=Page[LeadOut])
def list_leads(
    broker: CurrentBroker,
    db: DbSession,
    paging: Paging,
    filters: Annotated[LeadFilters, Depends(get_filters)],
) -> Page[LeadOut]:
    rows, total = service.list_leads(db, broker_id=broker.id, filters=filters, paging=paging)
    return Page[LeadOut](
        items=[LeadOut.model_validate(r) for r in rows],
        total=total,
        limit=paging.limit,
        offset=paging.offset,
    )


@router.post("/import", response_model=ImportReportOut)
def import_leads(
    auth: Auth,
    db: DbSession,
    file: Annotated[UploadFile, File(description="CSV, UTF-8; a header row with a phone column")],
    country: Annotated[
        str | None,
        Form(min_length=2, max_length=2, description="Region for numbers without +"),
    ] = None,
) -> ImportReportOut:
    limit = get_settings().import_max_bytes
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"the file is over {limit} bytes", max_bytes=limit)
    region = _region(country)
    report = import_service.import_csv(
        db,
        broker_id=auth.broker.id,
        data=data,
        actor=auth.actor,
        default_region=region,
        filename=file.filename,
    )
    db.commit()
    return ImportReportOut.model_validate(report)


def _region(country: str | None) -> str | None:
    if country is None:
        return None
    try:
        return phones.check_region(country)
    except phones.UnknownRegion as exc:
        raise InvalidInput(str(exc), errors=[field_error("country", str(exc))]) from None


@router.get("/{lead_id}", response_model=LeadOut)
def get_lead(lead: CurrentLead) -> LeadOut:
    return LeadOut.model_validate(lead)


@router.patch("/{lead_id}", response_model=LeadOut)
def update_lead(body: LeadUpdate, lead: CurrentLead, auth: Auth, db: DbSession) -> LeadOut:
    service.update(db, lead=lead, data=body, actor=auth.actor)
    db.commit()
    return LeadOut.model_validate(lead)


@router.delete("/{lead_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_lead(lead: CurrentLead, auth: Auth, db: DbSession) -> None:
    service.delete(db, lead=lead, actor=auth.actor)
    db.commit()


@router.get("/{lead_id}/timeline", response_model=Page[ActivityOut])
def timeline(
    lead: CurrentLead,
    db: DbSession,
    paging: Paging,
    kind: Annotated[list[ActivityKind] | None, Query()] = None,
) -> Page[ActivityOut]:
    rows, total = service.list_activities(db, lead=lead, paging=paging, kinds=kind or ())
    return Page[ActivityOut](
        items=[ActivityOut.model_validate(r) for r in rows],
        total=total,
        limit=paging.limit,
        offset=paging.offset,
    )


@router.post("/{lead_id}/notes", response_model=ActivityOut, status_code=status.HTTP_201_CREATED)
def add_note(body: NoteCreate, lead: CurrentLead, auth: Auth, db: DbSession) -> ActivityOut:
    activity = service.add_note(db, lead=lead, body=body.body, actor=auth.actor)
    db.commit()
    return ActivityOut.model_validate(activity)


@router.get("/{lead_id}/consents", response_model=list[ConsentOut])
def list_consents(lead: CurrentLead, db: DbSession) -> list[ConsentOut]:
    return [ConsentOut.model_validate(c) for c in service.list_consents(db, lead=lead)]


@router.post("/{lead_id}/consents", response_model=ConsentOut, status_code=status.HTTP_201_CREATED)
def add_consent(body: ConsentCreate, lead: CurrentLead, auth: Auth, db: DbSession) -> ConsentOut:
    consent = service.add_consent(
        db,
        lead=lead,
        channel=body.channel,
        source=body.source,
        text_shown=body.text_shown,
        granted_at=body.granted_at,
        actor=auth.actor,
    )
    db.commit()
    return ConsentOut.model_validate(consent)


@router.post("/{lead_id}/consents/{consent_id}/revoke", response_model=ConsentOut)
def revoke_consent(
    consent_id: int,
    lead: CurrentLead,
    auth: Auth,
    db: DbSession,
    body: ConsentRevoke | None = None,
) -> ConsentOut:
    consent = service.revoke_consent(
        db,
        lead=lead,
        consent_id=consent_id,
        actor=auth.actor,
        reason=body.reason if body else None,
    )
    db.commit()
    return ConsentOut.model_validate(consent)


@router.post("/{lead_id}/do-not-call", response_model=LeadOut)
def mark_do_not_call(body: DoNotCallIn, lead: CurrentLead, auth: Auth, db: DbSession) -> LeadOut:
    service.mark_do_not_call(db, lead=lead, reason=body.reason, actor=auth.actor)
    db.commit()
    return LeadOut.model_validate(lead)


@router.delete("/{lead_id}/do-not-call", response_model=LeadOut)
def clear_do_not_call(body: DoNotCallIn, lead: CurrentLead, auth: Auth, db: DbSession) -> LeadOut:
    service.clear_do_not_call(db, lead=lead, reason=body.reason, actor=auth.actor)
    db.commit()
    return LeadOut.model_validate(lead)
