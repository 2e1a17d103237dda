"""CSV import: the pure parser first, then the service and the API on the real database."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crm.audit.models import AuditLog
from crm.config import get_settings
from crm.db import get_sessionmaker
from crm.enums import Language
from crm.leads import importer
from crm.leads.importer import ImportFileError, ImportTooLarge, RowError, parse, parse_amount
from crm.leads.models import Financing, Lead, LeadActivity, PropertyType, Timeline
from tests.conftest import Tenant

API = "/api/v1/leads"


def parse_text(text: str, *, region: str = "US", max_rows: int = 1000) -> importer.ParsedFile:
    return parse(text, max_rows=max_rows, default_region=region)


# --- the pure parser -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ("Nombre", "full_name"),
        ("Full Name", "full_name"),
        ("TELÉFONO", "phone"),
        ("telefono", "phone"),
        ("Mobile", "phone"),
        ("E-mail", "email"),
        ("correo", "email"),
        ("Origen", "source"),
        ("budget_min", "budget_min"),
        ("Budget Max", "budget_max"),
        ("currency", "budget_currency"),
        ("Zonas", "areas"),
        ("property type", "property_type"),
        ("Habitaciones", "bedrooms"),
        ("timeline", "timeline"),
        ("Financiación", "financing"),
        ("idioma", "language"),
        ("Notas", "notes"),
        ("Assigned To", "assigned_to"),
    ],
)
def test_header_aliases(header: str, field: str) -> None:
    mapped, ignored = importer.map_columns([header])
    assert mapped == {0: field}
    assert ignored == []


def test_unknown_and_repeated_columns_are_ignored_and_listed() -> None:
    mapped, ignored = importer.map_columns(["Phone", "Favourite colour", "Mobile", "", "Name"])
    assert mapped == {0: "phone", 4: "full_name"}
    assert ignored == ["Favourite colour", "Mobile"]


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_delimiter_is_found_from_the_header(delimiter: str) -> None:
    text = delimiter.join(["name", "phone", "areas"]) + "\n"
    text += delimiter.join(["Ana", "+1 212 555 0100", '"Centro;Norte"']) + "\n"
    parsed = parse_text(text)
    assert parsed.delimiter == delimiter
    assert [r.data.phone for r in parsed.rows] == ["+12125550100"]
    assert parsed.rows[0].data.areas == ["Centro", "Norte"]


def test_excel_sep_line_is_obeyed_and_counted_as_a_row() -> None:
    parsed = parse_text("sep=;\nphone;name\n+12125550100;Ana\nbad;Bo\n")
    assert parsed.delimiter == ";"
    assert [r.row for r in parsed.rows] == [3]
    assert [e.row for e in parsed.errors] == [4]


def test_bom_is_dropped_by_decode_and_by_parse() -> None:
    data = "\ufeffPhone,Name\n+12125550100,Ana\n".encode()
    text = importer.decode(data, max_bytes=1000)
    assert text.startswith("Phone")
    parsed = parse_text("\ufeffPhone,Name\n+12125550100,Ana\n")
    assert parsed.columns == {"Phone": "phone", "Name": "full_name"}


def test_areas_split_on_semicolon_and_pipe_trimmed_and_deduplicated() -> None:
    parsed = parse_text('phone,areas\n+12125550100," Centro ;Norte| centro |"\n')
    assert parsed.rows[0].data.areas == ["Centro", "Norte"]


def test_values_in_the_ways_exports_write_them() -> None:
    text = (
        "teléfono;nombre;presupuesto_min;presupuesto;tipo;plazo;financiación;idioma;habitaciones\n"
        "612 34 56 78;Ana;150.000 €;250.000 €;Piso;3 meses;hipoteca;Español;3\n"
        "+1 212 555 0100;Bob;US$ 1,5M;2m;Casa;asap;cash;en-US;2.0\n"
    )
    parsed = parse_text(text, region="ES")
    assert parsed.errors == []
    ana, bob = (r.data for r in parsed.rows)
    assert ana.phone == "+34612345678"
    assert (ana.budget_min, ana.budget_max, ana.budget_currency) == (
        Decimal("150000.00"),
        Decimal("250000.00"),
        "EUR",
    )
    assert (ana.property_type, ana.timeline, ana.financing, ana.language, ana.bedrooms) == (
        PropertyType.apartment,
        Timeline.within_3_months,
        Financing.needs_mortgage,
        Language.es,
        3,
    )
    assert (bob.budget_min, bob.budget_max, bob.budget_currency) == (
        Decimal("1500000.00"),
        Decimal("2000000.00"),
        "USD",
    )
    assert (bob.property_type, bob.timeline, bob.financing, bob.language) == (
        PropertyType.house,
        Timeline.immediate,
        Financing.cash,
        Language.en,
    )


@pytest.mark.parametrize(
    ("cell", "value", "currency"),
    [
        ("250000", "250000", None),
        ("$250,000", "250000", None),
        ("250.000", "250000", None),
        ("250.000,50 €", "250000.50", "EUR"),
        ("1,234,567.89", "1234567.89", None),
        ("1.5", "1.5", None),
        ("250k", "250000", None),
        ("250 mil", "250000", None),
        ("1,5M", "1500000", None),
        ("MXN 3.2m", "3200000", "MXN"),
        ("MX$ 900,000", "900000", "MXN"),
        ("300000 usd", "300000", "USD"),
        ("£400,000", "400000", "GBP"),
    ],
)
def test_amounts(cell: str, value: str, currency: str | None) -> None:
    amount = parse_amount(cell)
    assert amount.value == Decimal(value)
    assert amount.currency == currency


@pytest.mark.parametrize("cell", ["abc", "-5", "1.2.3", "12,34,5", "xyz 100", "100 abc", "$"])
def test_not_amounts(cell: str) -> None:
    with pytest.raises(ValueError, match="not an amount"):
        parse_amount(cell)


def test_row_errors_name_row_field_and_reason() -> None:
    text = (
        "phone,email,bedrooms,property_type,budget_min,budget_max\n"
        "+12125550100,ok@x.com,2,house,100,200\n"
        "\n"
        "123,bad,many,castle,300,200\n"
        ",no-phone@x.com,,,,\n"
        '"+12125550101","multi\nline@x.com",1,,,\n'
        "+12125550102,,,,,\n"
    )
    parsed = parse_text(text)
    assert [r.row for r in parsed.rows] == [2, 7]
    errors = {(e.row, e.field) for e in parsed.errors}
    assert errors == {
        (4, "phone"),
        (4, "email"),
        (4, "bedrooms"),
        (4, "property_type"),
        (4, "budget_max"),
        (5, "phone"),
        (6, "email"),
    }
    assert parsed.data_rows == 5
    assert parsed.failed_rows == 3
    messages = {(e.row, e.field): e.message for e in parsed.errors}
    assert "wrong length" in messages[(4, "phone")]
    assert messages[(5, "phone")] == "phone is empty"
    assert "'castle' is not one of" in messages[(4, "property_type")]


def test_blank_cells_are_not_set() -> None:
    parsed = parse_text("phone,name,email,language\n+12125550100,Ana,,\n")
    assert parsed.rows[0].data.model_fields_set == {"phone", "full_name"}


def test_duplicate_phone_in_one_file_first_wins() -> None:
    text = "phone,name\n+1 212 555 0100,First\n(212) 555-0100,Second\n+12125550101,Other\n"
    parsed = parse_text(text)
    assert [(r.row, r.data.full_name) for r in parsed.rows] == [(2, "First"), (4, "Other")]
    assert parsed.errors == [RowError(3, "phone", "duplicate of row 2")]


def test_country_column_is_a_per_row_hint() -> None:
    parsed = parse_text("phone,country\n612 34 56 78,ES\n55 1234 5678,mx\n(212) 555-0100,\n")
    assert [r.data.phone for r in parsed.rows] == ["+34612345678", "+525512345678", "+12125550100"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"  \n", "empty"),
        ("Teléfono\n612345678\n".encode("latin-1"), "not UTF-8"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8"),
        (b"phone\n+12125550100\x00\n", "NUL"),
    ],
)
def test_unreadable_files(data: bytes, message: str) -> None:
    with pytest.raises(ImportFileError, match=message):
        importer.decode(data, max_bytes=1000)


def test_limits_are_refused_as_too_large() -> None:
    with pytest.raises(ImportTooLarge):
        importer.decode(b"phone\n" + b"+12125550100\n" * 100, max_bytes=100)
    rows = "".join(f"+1212555{n:04d}\n" for n in range(4))
    with pytest.raises(ImportTooLarge):
        parse_text("phone\n" + rows, max_rows=3)
    assert len(parse_text("phone\n" + rows + "\n\n", max_rows=4).rows) == 4


def test_a_file_without_a_phone_column_is_refused() -> None:
    with pytest.raises(ImportFileError) as info:
        parse_text("name,email\nAna,a@x.com\n")
    assert info.value.field == "phone"
    assert "no phone column" in info.value.message
    with pytest.raises(ImportFileError, match="no header"):
        parse_text("\n\n")


# --- through the API, on the database ----------------------------------------------------

MIXED = (
    "Nombre,Teléfono,Correo,Origen,Presupuesto,Zonas,Tipo,Notas\n"
    "Ana,+1 212 555 0100,ana@x.com,portal,300000,Centro;Norte,casa,first\n"
    "Bob,not-a-phone,bob@x.com,portal,,,,\n"
    "Cid,(212) 555-0102,cid@x,referral,,,,\n"
    "Dee,212.555.0103,dee@x.com,referral,1.2M,Sur|Este,piso,\n"
    "Ana again,+12125550100,,,,,,\n"
)


async def upload(
    client: httpx.AsyncClient, tenant: Tenant, data: bytes, **form: str
) -> httpx.Response:
    return await client.post(
        f"{API}/import",
        files={"file": ("leads.csv", data, "text/csv")},
        data=form,
        headers=tenant.headers,
    )


def count(session: Session, model: Any, broker_id: int, *where: Any) -> int:
    stmt = select(func.count()).select_from(model).where(model.broker_id == broker_id, *where)
    return session.scalar(stmt) or 0


async def test_mixed_file_imports_valid_rows_and_reports_the_rest(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await upload(client, tenant, MIXED.encode())
    assert response.status_code == 200, response.text
    report = response.json()
    assert {k: report[k] for k in ("rows", "created", "updated", "unchanged", "failed")} == {
        "rows": 5,
        "created": 2,
        "updated": 0,
        "unchanged": 0,
        "failed": 3,
    }
    assert [(e["row"], e["field"]) for e in report["errors"]] == [
        (3, "phone"),
        (4, "email"),
        (6, "phone"),
    ]
    assert report["errors"][2]["message"] == "duplicate of row 2"

    listed = await client.get(
        API, params={"sort": "full_name", "order": "asc"}, headers=tenant.headers
    )
    leads = listed.json()["items"]
    assert [(lead["full_name"], lead["phone"]) for lead in leads] == [
        ("Ana", "+12125550100"),
        ("Dee", "+12125550103"),
    ]
    assert leads[0]["areas"] == ["Centro", "Norte"]
    assert leads[0]["property_type"] == "house"
    assert leads[1]["budget_max"] == "1200000.00"

    with get_sessionmaker()() as session:
        actions = session.scalars(
            select(AuditLog.action).where(AuditLog.broker_id == tenant.id).order_by(AuditLog.id)
        ).all()
        assert actions.count("lead.create") == 2
        summary = session.scalars(
            select(AuditLog).where(
                AuditLog.broker_id == tenant.id, AuditLog.action == "lead.import"
            )
        ).one()
        assert summary.diff is not None
        assert summary.diff["created"] == 2
        assert summary.diff["failed"] == 3
        assert summary.diff["filename"] == "leads.csv"
        assert summary.actor_type == "api_key"


async def test_reimport_is_idempotent(client: httpx.AsyncClient, tenant: Tenant) -> None:
    first = await upload(client, tenant, MIXED.encode())
    assert first.json()["created"] == 2
    with get_sessionmaker()() as session:
        audit_before = count(session, AuditLog, tenant.id)
        activities_before = count(session, LeadActivity, tenant.id)
        leads_before = {
            lead.id: lead.updated_at
            for lead in session.scalars(select(Lead).where(Lead.broker_id == tenant.id))
        }

    second = await upload(client, tenant, MIXED.encode())
    report = second.json()
    assert (report["created"], report["updated"], report["unchanged"], report["failed"]) == (
        0,
        0,
        2,
        3,
    )
    with get_sessionmaker()() as session:
        assert count(session, AuditLog, tenant.id) == audit_before
        assert count(session, LeadActivity, tenant.id) == activities_before
        leads_after = {
            lead.id: lead.updated_at
            for lead in session.scalars(select(Lead).where(Lead.broker_id == tenant.id))
        }
    assert leads_after == leads_before


async def test_reimport_updates_only_the_changed_cells(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    made = await client.post(
        API,
        json={"phone": "+12125550100", "full_name": "Ana", "email": "keep@x.com", "bedrooms": 2},
        headers=tenant.headers,
    )
    lead_id = made.json()["id"]
    text = "phone,name,email,bedrooms\n(212) 555-0100,Ana,,3\n"
    report = (await upload(client, tenant, text.encode())).json()
    assert (report["created"], report["updated"]) == (0, 1)
    lead = (await client.get(f"{API}/{lead_id}", headers=tenant.headers)).json()
    assert (lead["email"], lead["bedrooms"]) == ("keep@x.com", 3)  # blank cell kept the email
    with get_sessionmaker()() as session:
        update = session.scalars(
            select(AuditLog).where(
                AuditLog.object_id == str(lead_id), AuditLog.action == "lead.update"
            )
        ).one()
        assert update.diff == {"bedrooms": [2, 3]}


async def test_a_row_the_service_refuses_rolls_back_alone(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    made = await client.post(
        API, json={"phone": "+12125550100", "budget_max": 100000}, headers=tenant.headers
    )
    lead_id = made.json()["id"]
    text = (
        "phone,budget_min,name\n"
        "+12125550100,200000,Changed Name\n"  # min above the stored max: refused
        "+12125550101,,New\n"
    )
    report = (await upload(client, tenant, text.encode())).json()
    assert (report["created"], report["updated"], report["failed"]) == (1, 0, 1)
    assert report["errors"] == [
        {
            "row": 2,
            "field": "budget_min",
            "message": "budget_min 200000.00 is above budget_max 100000.00",
        }
    ]
    lead = (await client.get(f"{API}/{lead_id}", headers=tenant.headers)).json()
    assert (lead["full_name"], lead["budget_min"]) == (None, None)


async def test_a_deleted_leads_phone_is_imported_as_new(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    made = await client.post(API, json={"phone": "+12125550100"}, headers=tenant.headers)
    await client.delete(f"{API}/{made.json()['id']}", headers=tenant.headers)
    report = (await upload(client, tenant, b"phone\n+12125550100\n")).json()
    assert report["created"] == 1


async def test_country_form_field_sets_the_default_region(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    report = (await upload(client, tenant, b"telefono\n612 34 56 78\n", country="es")).json()
    assert report["created"] == 1
    bad = await upload(client, tenant, b"telefono\n612 34 56 78\n", country="zz")
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "country"


async def test_oversized_file_is_413(
    client: httpx.AsyncClient, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "import_max_bytes", 64)
    response = await upload(client, tenant, b"phone\n" + b"+12125550100\n" * 10)
    assert response.status_code == 413
    assert response.json()["max_bytes"] == 64


async def test_too_many_rows_is_413_and_writes_nothing(
    client: httpx.AsyncClient, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "import_max_rows", 2)
    rows = "".join(f"+1212555{n:04d}\n" for n in range(3))
    response = await upload(client, tenant, ("phone\n" + rows).encode())
    assert response.status_code == 413
    assert "more than 2 rows" in response.json()["detail"]
    with get_sessionmaker()() as session:
        assert count(session, Lead, tenant.id) == 0


@pytest.mark.parametrize(
    ("data", "field", "detail"),
    [
        ("Teléfono\n612345678\n".encode("cp1252"), "file", "not UTF-8"),
        (b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xb5U", "file", "not UTF-8"),
        (b"", "file", "empty"),
        (b"name,email\nAna,a@x.com\n", "phone", "no phone column"),
    ],
)
async def test_unreadable_upload_is_422(
    client: httpx.AsyncClient, tenant: Tenant, data: bytes, field: str, detail: str
) -> None:
    response = await upload(client, tenant, data)
    assert response.status_code == 422
    body = response.json()
    assert detail in body["detail"]
    assert body["errors"][0]["field"] == field


async def test_import_needs_a_file(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.post(f"{API}/import", headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "file"
