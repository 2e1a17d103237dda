"""Message templates, the variables they may use, and their preview."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, status

from crm.deps import Auth, CurrentBroker, DbSession, Paging
from crm.enums import Channel, Language
from crm.listing import Page, page
from crm.templates import render, service
from crm.templates.models import MessageTemplate
from crm.templates.schemas import (
    PreviewIn,
    PreviewOut,
    TemplateCreate,
    TemplateOut,
    TemplateUpdate,
    VariableOut,
)

router = APIRouter(prefix="/templates", tags=["templates"])


def get_current_template(template_id: int, broker: CurrentBroker, db: DbSession) -> MessageTemplate:
    return service.get_or_raise(db, broker_id=broker.id, template_id=template_id)


CurrentTemplate = Annotated[MessageTemplate, Depends(get_current_template)]


def template_out(template: MessageTemplate) -> TemplateOut:
    used = render.variables_used(template.body)
    if template.subject:
        used = sorted(
            {*used, *render.variables_used(template.subject)}, key=list(render.CATALOGUE).index
        )
    return TemplateOut.model_validate(
        {
            **{n: getattr(template, n) for n in TemplateOut.model_fields if n != "variables"},
            "variables": used,
        }
    )


@router.get("/variables", response_model=list[VariableOut])
def list_variables(broker: CurrentBroker) -> list[VariableOut]:
    """The catalogue: every variable a template may name."""
    return [VariableOut(name=n, description=d) for n, d in render.CATALOGUE.items()]


@router.get("", response_model=Page[TemplateOut])
def list_templates(
    broker: CurrentBroker,
    db: DbSession,
    paging: Paging,
    channel: Channel | None = None,
    language: Language | None = None,
    name: Annotated[str | None, Query(max_length=100)] = None,
) -> Page[TemplateOut]:
    stmt = service.query(broker_id=broker.id, channel=channel, language=language, name=name)
    rows, total = page(
        db,
        stmt,
        paging,
        sortable={
            "name": MessageTemplate.name,
            "created_at": MessageTemplate.created_at,
            "updated_at": MessageTemplate.updated_at,
        },
        default_sort="name",
        id_column=MessageTemplate.id,
    )
    return Page[TemplateOut](
        items=[template_out(t) for t in rows],
        total=total,
        limit=paging.limit,
        offset=paging.offset,
    )


@router.post("", response_model=TemplateOut, status_code=status.HTTP_201_CREATED)
def create_template(body: TemplateCreate, auth: Auth, db: DbSession) -> TemplateOut:
    template = service.create(db, broker_id=auth.broker.id, actor=auth.actor, **body.model_dump())
    db.commit()
    return template_out(template)


@router.get("/{template_id}", response_model=TemplateOut)
def get_template(template: CurrentTemplate) -> TemplateOut:
    return template_out(template)


@router.patch("/{template_id}", response_model=TemplateOut)
def update_template(
    body: TemplateUpdate, template: CurrentTemplate, auth: Auth, db: DbSession
) -> TemplateOut:
    template = service.update(db, template=template, patch=body, actor=auth.actor)
    db.commit()
    return template_out(template)


@router.delete("/{template_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_template(template: CurrentTemplate, auth: Auth, db: DbSession) -> None:
    service.delete(db, template=template, actor=auth.actor)
    db.commit()


@router.post("/{template_id}/preview", response_model=PreviewOut)
def preview_template(body: PreviewIn, template: CurrentTemplate, db: DbSession) -> PreviewOut:
    """Render without sending: with a lead's data, the values given, or both."""
    rendered = service.preview(
        db, template=template, lead_id=body.lead_id, variables=body.variables
    )
    return PreviewOut(
        channel=template.channel,
        language=template.language,
        subject=rendered.subject,
        body=rendered.body,
        length=len(rendered.body),
    )
