"""`voiceagent leads import`, run through Typer against the test database."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from crm.audit.models import ActorType, AuditLog
from crm.db import get_sessionmaker
from crm.leads.models import Lead
from tests.conftest import Tenant
from voice_gateway.cli import app

runner = CliRunner()

CSV = (
    "nombre;teléfono;zonas;presupuesto\n"
    "Ana;612 34 56 78;Centro|Retiro;250.000 €\n"
    "Bob;12;;\n"
    "Cid;+34 699 00 11 22;;\n"
)


def write(tmp_path: Path, text: str, name: str = "leads.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def leads_of(broker_id: int) -> list[Lead]:
    with get_sessionmaker()() as session:
        return list(
            session.scalars(select(Lead).where(Lead.broker_id == broker_id).order_by(Lead.id))
        )


def test_import_prints_counts_and_row_errors(tmp_path: Path, tenant: Tenant) -> None:
    path = write(tmp_path, CSV)
    result = runner.invoke(
        app, ["leads", "import", str(path), "--broker", str(tenant.id), "--country", "es"]
    )
    assert result.exit_code == 2, result.output  # some rows failed; the rest are in
    assert "rows: 3  created: 2  updated: 0  unchanged: 0  failed: 1" in result.output
    assert "phone" in result.output
    assert "wrong length" in result.output
    leads = leads_of(tenant.id)
    assert [(lead.full_name, lead.phone) for lead in leads] == [
        ("Ana", "+34612345678"),
        ("Cid", "+34699001122"),
    ]
    assert leads[0].areas == ["Centro", "Retiro"]
    assert leads[0].budget_currency == "EUR"
    with get_sessionmaker()() as session:
        summary = session.scalars(
            select(AuditLog).where(
                AuditLog.broker_id == tenant.id, AuditLog.action == "lead.import"
            )
        ).one()
        assert summary.actor_type is ActorType.cli
        assert summary.diff is not None
        assert summary.diff["filename"] == "leads.csv"


def test_second_run_changes_nothing(tmp_path: Path, tenant: Tenant) -> None:
    path = write(tmp_path, CSV)
    args = ["leads", "import", str(path), "--broker", str(tenant.id), "--country", "ES"]
    runner.invoke(app, args)
    with get_sessionmaker()() as session:
        audit_rows = session.scalars(
            select(AuditLog.id).where(AuditLog.broker_id == tenant.id)
        ).all()
    again = runner.invoke(app, args)
    assert "created: 0  updated: 0  unchanged: 2  failed: 1" in again.output
    with get_sessionmaker()() as session:
        assert (
            session.scalars(select(AuditLog.id).where(AuditLog.broker_id == tenant.id)).all()
            == audit_rows
        )


def test_a_clean_file_exits_zero(tmp_path: Path, tenant: Tenant) -> None:
    path = write(tmp_path, "phone,name\n+12125550100,Ana\n")
    result = runner.invoke(app, ["leads", "import", str(path), "--broker", str(tenant.id)])
    assert result.exit_code == 0, result.output
    assert "created: 1" in result.output


def test_refused_files_exit_one_and_write_nothing(tmp_path: Path, tenant: Tenant) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes("teléfono\n612345678\n".encode("latin-1"))
    no_phone = write(tmp_path, "name\nAna\n", "nophone.csv")
    for path in (latin, no_phone):
        result = runner.invoke(app, ["leads", "import", str(path), "--broker", str(tenant.id)])
        assert result.exit_code == 1
    assert leads_of(tenant.id) == []


def test_unknown_broker_and_bad_arguments(tmp_path: Path, tenant: Tenant) -> None:
    path = write(tmp_path, CSV)
    missing = runner.invoke(app, ["leads", "import", str(path), "--broker", "987654321"])
    assert missing.exit_code == 1
    assert "broker 987654321 not found" in missing.output
    bad_country = runner.invoke(
        app, ["leads", "import", str(path), "--broker", str(tenant.id), "--country", "XX"]
    )
    assert bad_country.exit_code == 2
    no_file = runner.invoke(
        app, ["leads", "import", str(tmp_path / "absent.csv"), "--broker", str(tenant.id)]
    )
    assert no_file.exit_code == 2
    assert leads_of(tenant.id) == []
