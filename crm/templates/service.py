"""Message templates: saved only when they render, rendered with a lead's own data.

A template is checked in full when it is created or changed (`render.check_template`),
so a broken one is refused with every problem listed rather than failing later inside a
campaign. Rendering for a lead formats dates, money and lists in the template's
language (the words around them are in that language) and on the lead's clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit import service as audit
from crm.brokers import service as broker_service
from crm.brokers.models import Broker
from crm.enums import Channel, Language
from crm.errors import Conflict, InvalidInput, NotFound, field_error
from crm.leads import service as lead_service
from crm.leads.models import Lead
from crm.templates import formatting, render
from crm.templates.models import MessageTemplate
from crm.templates.schemas import TemplateUpdate
from crm.visits import service as visit_service
from crm.visits.models import Visit

AUDITED = ["name", "channel", "language", "subject", "body", "provider_template_id"]


def get(db: Session, *, broker_id: int, template_id: int) -> MessageTemplate | None:
    return db.scalars(
        select(MessageTemplate).where(
            MessageTemplate.id == template_id, MessageTemplate.broker_id == broker_id
        )
    ).first()


def get_or_raise(db: Session, *, broker_id: int, template_id: int) -> MessageTemplate:
    template = get(db, broker_id=broker_id, template_id=template_id)
    if template is None:
        raise NotFound(f"template {template_id} not found")
    return template


def get_by_name(
    db: Session, *, broker_id: int, name: str, channel: Channel, language: Language
) -> MessageTemplate | None:
    return db.scalars(
        select(MessageTemplate).where(
            MessageTemplate.broker_id == broker_id,
            MessageTemplate.name == name,
            MessageTemplate.channel == channel,
            MessageTemplate.language == language,
        )
    ).first()


def find_for_lead(
    db: Session, *, broker_id: int, name: str, channel: Channel, lead: Lead
) -> MessageTemplate | None:
    """The `name` template for `channel` in the lead's language, else in any language
    (Spanish first): a lead is better served in another language than not at all."""
    candidates = db.scalars(
        select(MessageTemplate).where(
            MessageTemplate.broker_id == broker_id,
            MessageTemplate.name == name,
            MessageTemplate.channel == channel,
        )
    ).all()
    by_language = {t.language: t for t in candidates}
    for language in (lead.language, *Language):
        if language in by_language:
            return by_language[language]
    return None


def query(
    *,
    broker_id: int,
    channel: Channel | None = None,
    language: Language | None = None,
    name: str | None = None,
) -> Select[MessageTemplate]:
    stmt = select(MessageTemplate).where(MessageTemplate.broker_id == broker_id)
    if channel is not None:
        stmt = stmt.where(MessageTemplate.channel == channel)
    if language is not None:
        stmt = stmt.where(MessageTemplate.language == language)
    if name is not None:
        stmt = stmt.where(MessageTemplate.name == name)
    return stmt


def _refuse_problems(problems: Sequence[render.Problem], what: str) -> None:
    if problems:
        count = len(problems)
        raise InvalidInput(
            f"{what}: {count} problem{'s' if count != 1 else ''}",
            errors=[p.as_error() for p in problems],
        )


def _check(channel: Channel, subject: str | None, body: str) -> None:
    _refuse_problems(
        render.check_template(channel=channel, subject=subject, body=body),
        "the template is not valid",
    )


def _save(db: Session, template: MessageTemplate) -> None:
    """Flush, turning a lost race on the unique key into the same 409 as the pre-check."""
    existing = get_by_name(
        db,
        broker_id=template.broker_id,
        name=template.name,
        channel=template.channel,
        language=template.language,
    )
    if existing is not None and existing is not template:
        raise _duplicate(template, existing.id)
    try:
        with db.begin_nested():
            db.add(template)
            db.flush()
    except IntegrityError as exc:
        raise _duplicate(template, None) from exc


def _duplicate(template: MessageTemplate, existing_id: int | None) -> Conflict:
    return Conflict(
        f"a {template.channel.value} template named {template.name!r} in "
        f"{template.language.value} already exists",
        existing_template_id=existing_id,
    )


def _blank_to_none(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


def create(
    db: Session,
    *,
    broker_id: int,
    name: str,
    channel: Channel,
    language: Language,
    body: str,
    actor: Actor,
    subject: str | None = None,
    provider_template_id: str | None = None,
) -> MessageTemplate:
    subject = _blank_to_none(subject)
    _check(channel, subject, body)
    template = MessageTemplate(
        broker_id=broker_id,
        name=name.strip(),
        channel=channel,
        language=language,
        subject=subject,
        body=body,
        provider_template_id=_blank_to_none(provider_template_id),
    )
    _save(db, template)
    audit.record(
        db,
        actor=actor,
        broker_id=broker_id,
        action="template.create",
        object_type="message_template",
        object_id=template.id,
        changes=audit.snapshot(template, AUDITED),
    )
    return template


def update(
    db: Session, *, template: MessageTemplate, patch: TemplateUpdate, actor: Actor
) -> MessageTemplate:
    """Apply the fields sent; the result is checked whole, as if it were created anew."""
    sent = patch.model_fields_set
    name = patch.name.strip() if "name" in sent and patch.name else template.name
    channel = patch.channel if "channel" in sent and patch.channel else template.channel
    language = patch.language if "language" in sent and patch.language else template.language
    subject = _blank_to_none(patch.subject) if "subject" in sent else template.subject
    body = patch.body if "body" in sent and patch.body else template.body
    provider_id = (
        _blank_to_none(patch.provider_template_id)
        if "provider_template_id" in sent
        else template.provider_template_id
    )
    _check(channel, subject, body)
    before = audit.snapshot(template, AUDITED)
    with db.no_autoflush:
        template.name, template.channel, template.language = name, channel, language
        template.subject, template.body = subject, body
        template.provider_template_id = provider_id
        changes = audit.diff(before, audit.snapshot(template, AUDITED))
        if not changes:
            return template
        _save(db, template)
    audit.record(
        db,
        actor=actor,
        broker_id=template.broker_id,
        action="template.update",
        object_type="message_template",
        object_id=template.id,
        changes=changes,
    )
    db.flush()
    return template


def delete(db: Session, *, template: MessageTemplate, actor: Actor) -> None:
    audit.record(
        db,
        actor=actor,
        broker_id=template.broker_id,
        action="template.delete",
        object_type="message_template",
        object_id=template.id,
        changes=audit.snapshot(template, AUDITED),
    )
    try:
        with db.begin_nested():
            db.delete(template)
            db.flush()
    except IntegrityError as exc:
        raise Conflict(
            f"template {template.id} is in use; change what uses it first",
            template_id=template.id,
        ) from exc


# -- rendering ------------------------------------------------------------------------


def broker_variables(broker: Broker) -> dict[str, Any]:
    return {
        "broker.name": broker.name,
        "broker.legal_name": broker.legal_name,
        "broker.phone": broker.phone_numbers[0].e164 if broker.phone_numbers else None,
    }


def lead_variables(lead: Lead, language: Language) -> dict[str, Any]:
    def money(amount: Any) -> str | None:
        if amount is None:
            return None
        return formatting.format_money(amount, lead.budget_currency, language)

    return {
        "lead.first_name": formatting.first_name(lead.full_name),
        "lead.full_name": (lead.full_name or "").strip() or None,
        "lead.phone": lead.phone,
        "lead.email": lead.email,
        "lead.areas": formatting.join_list(lead.areas or [], language) or None,
        "lead.budget_min": money(lead.budget_min),
        "lead.budget_max": money(lead.budget_max),
        "lead.property_type": (
            formatting.property_type_label(lead.property_type.value, language)
            if lead.property_type
            else None
        ),
        "lead.bedrooms": lead.bedrooms,
    }


def visit_variables(visit: Visit, *, tz: str | None, language: Language) -> dict[str, Any]:
    return {
        "visit.date": formatting.format_date(visit.scheduled_at, tz, language),
        "visit.time": formatting.format_time(visit.scheduled_at, tz, language),
        "visit.location": visit.location,
        "visit.property_ref": visit.property_ref,
        "visit.duration_minutes": visit.duration_minutes,
    }


def check_extra(extra: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(extra) - set(render.CATALOGUE))
    if unknown:
        raise InvalidInput(
            f"unknown variables: {', '.join(unknown)}",
            errors=[field_error(f"variables.{name}", "not in the catalogue") for name in unknown],
        )
    return dict(extra)


def _render(template: MessageTemplate, values: Mapping[str, Any]) -> render.Rendered:
    try:
        return render.render(
            channel=template.channel, subject=template.subject, body=template.body, values=values
        )
    except render.RenderError as exc:
        _refuse_problems(exc.problems, f"template {template.id} cannot be rendered")
        raise  # unreachable: the problems list is never empty


def render_for_lead(
    db: Session,
    *,
    template: MessageTemplate,
    lead: Lead,
    extra: Mapping[str, Any] | None = None,
    visit: Visit | None = None,
    now: datetime | None = None,
) -> render.Rendered:
    """The message for `lead`; `visit` defaults to the lead's next scheduled visit, and
    `extra` (catalogued names) fills or overrides values such as `agent.name`."""
    if lead.broker_id != template.broker_id:
        raise NotFound(f"lead {lead.id} not found")
    broker = broker_service.get_or_raise(db, broker_id=lead.broker_id)
    language = template.language
    tz = lead.time_zone or broker.time_zone
    visit = visit or visit_service.next_scheduled(db, lead=lead, now=now)
    values: dict[str, Any] = {
        **broker_variables(broker),
        **lead_variables(lead, language),
        **(visit_variables(visit, tz=tz, language=language) if visit else {}),
        "optout_text": formatting.OPTOUT_TEXT[language],
    }
    values.update(check_extra(extra or {}))
    return _render(template, values)


def preview(
    db: Session,
    *,
    template: MessageTemplate,
    lead_id: int | None = None,
    variables: Mapping[str, Any] | None = None,
) -> render.Rendered:
    """What the template says for one of the broker's leads, or for the values given."""
    extra = check_extra(variables or {})
    if lead_id is not None:
        lead = lead_service.get_or_raise(db, broker_id=template.broker_id, lead_id=lead_id)
        return render_for_lead(db, template=template, lead=lead, extra=extra)
    broker = broker_service.get_or_raise(db, broker_id=template.broker_id)
    values = {
        **broker_variables(broker),
        "optout_text": formatting.OPTOUT_TEXT[template.language],
        **extra,
    }
    return _render(template, values)
