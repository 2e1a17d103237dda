"""Applying a CSV of leads to one broker: every row in its own savepoint, matched by phone.

A row that fails rolls back alone and is reported; the rows around it still land. A
row whose phone already has a live lead updates only the fields the row gives and that
differ, so importing the same file twice changes nothing and writes nothing the second
time. The caller commits: the API route once at the end, the CLI through session_scope.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit import service as audit
from crm.config import get_settings
from crm.errors import InvalidInput, PayloadTooLarge, Problem, field_error
from crm.leads import importer
from crm.leads import service as lead_service
from crm.leads.importer import ImportRow, ParsedFile, RowError
from crm.leads.models import Lead
from crm.leads.schemas import LeadUpdate

#: Called after each row with (rows done, rows to do), e.g. to move a progress bar.
Progress = Callable[[int, int], None]

Outcome = Literal["created", "updated", "unchanged"]

_PREFETCH_CHUNK = 1000


@dataclass(slots=True)
class ImportReport:
    rows: int
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    errors: list[RowError] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)

    def count(self, outcome: Outcome) -> None:
        if outcome == "created":
            self.created += 1
        elif outcome == "updated":
            self.updated += 1
        else:
            self.unchanged += 1

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)


def read_file(data: bytes, *, default_region: str | None = None) -> ParsedFile:
    """Decode and validate the whole file before anything is written; problems as 413/422."""
    settings = get_settings()
    try:
        text = importer.decode(data, max_bytes=settings.import_max_bytes)
        return importer.parse(
            text,
            max_rows=settings.import_max_rows,
            default_region=default_region or settings.default_region,
        )
    except importer.ImportTooLarge as exc:
        raise PayloadTooLarge(
            exc.message,
            max_bytes=settings.import_max_bytes,
            max_rows=settings.import_max_rows,
        ) from None
    except importer.ImportFileError as exc:
        raise InvalidInput(exc.message, errors=[field_error(exc.field, exc.message)]) from None


def import_csv(
    db: Session,
    *,
    broker_id: int,
    data: bytes,
    actor: Actor,
    default_region: str | None = None,
    filename: str | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    parsed = read_file(data, default_region=default_region)
    return apply(
        db,
        broker_id=broker_id,
        parsed=parsed,
        actor=actor,
        progress=progress,
        file_info={
            "filename": filename,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        },
    )


def apply(
    db: Session,
    *,
    broker_id: int,
    parsed: ParsedFile,
    actor: Actor,
    progress: Progress | None = None,
    file_info: Mapping[str, Any] | None = None,
) -> ImportReport:
    """Create or update a lead per valid row; one summary audit row if anything changed."""
    report = ImportReport(
        rows=parsed.data_rows,
        failed=parsed.failed_rows,
        errors=list(parsed.errors),
        ignored_columns=list(parsed.ignored_columns),
    )
    existing = _live_leads_by_phone(
        db, broker_id=broker_id, phones=(r.data.phone for r in parsed.rows)
    )
    total = len(parsed.rows)
    for done, row in enumerate(parsed.rows, start=1):
        try:
            outcome = _apply_row(
                db, broker_id=broker_id, row=row, lead=existing.get(row.data.phone), actor=actor
            )
        except Problem as exc:
            report.failed += 1
            report.errors.append(RowError(row.row, _problem_field(exc), exc.detail))
        else:
            report.count(outcome)
        if progress is not None:
            progress(done, total)
    report.errors.sort(key=lambda e: e.row)
    if report.changed:
        audit.record(
            db,
            actor=actor,
            broker_id=broker_id,
            action="lead.import",
            object_type="lead_import",
            object_id=None,
            changes={
                **(file_info or {}),
                "rows": report.rows,
                "created": report.created,
                "updated": report.updated,
                "unchanged": report.unchanged,
                "failed": report.failed,
                "columns": parsed.columns,
            },
        )
        db.flush()
    return report


def _apply_row(
    db: Session, *, broker_id: int, row: ImportRow, lead: Lead | None, actor: Actor
) -> Outcome:
    """What the row did to the broker's leads; a `Problem` leaves nothing of this row behind."""
    with db.begin_nested():
        if lead is None:
            lead_service.create(db, broker_id=broker_id, data=row.data, actor=actor)
            return "created"
        # Only the cells the row filled: a blank cell never clears what the CRM knows.
        given = row.data.model_dump(exclude_unset=True, exclude={"country", "phone"})
        update = LeadUpdate.model_construct(_fields_set=set(given), **given)
        changes = lead_service.apply_update(db, lead=lead, data=update, actor=actor)
        return "updated" if changes else "unchanged"


def _problem_field(exc: Problem) -> str | None:
    first = exc.errors[0] if exc.errors else {}
    value = first.get("field")
    return value if isinstance(value, str) else None


def _live_leads_by_phone(db: Session, *, broker_id: int, phones: Iterable[str]) -> dict[str, Lead]:
    """The broker's live leads for these numbers, fetched in chunks rather than per row."""
    wanted = sorted(set(phones))
    found: dict[str, Lead] = {}
    for start in range(0, len(wanted), _PREFETCH_CHUNK):
        chunk = wanted[start : start + _PREFETCH_CHUNK]
        for lead in db.scalars(
            select(Lead).where(
                Lead.broker_id == broker_id, Lead.phone.in_(chunk), Lead.deleted_at.is_(None)
            )
        ):
            found[lead.phone] = lead
    return found
