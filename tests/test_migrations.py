"""The migration history builds exactly the models' schema, on PostgreSQL and SQLite.

The rest of the suite builds its database with `create_all`; these tests are what keeps
the migrations honest: upgrade from empty, nothing left for autogenerate to find, the
audit trigger in place, a clean downgrade and a second upgrade.
"""

from __future__ import annotations

import io
import os
import pprint
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

import crm.models  # noqa: F401  - every table on the metadata
from crm import config as crm_config
from crm import db as crm_db
from crm.db import Base, make_engine
from crm.migrate import MIGRATIONS_DIR, alembic_config, downgrade, upgrade
from migrations import audit_triggers
from tests import services


@pytest.fixture
def pg_url() -> Iterator[str]:
    name = f"va_mig_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        url = services.create_database(name)
    except RuntimeError as exc:
        unreachable = str(exc)
    else:
        yield url
        services.drop_database(name)
        return
    pytest.fail(unreachable, pytrace=False)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'migrations.sqlite3'}"


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request: pytest.FixtureRequest) -> str:
    value: str = request.getfixturevalue(
        "pg_url" if request.param == "postgresql" else "sqlite_url"
    )
    return value


@contextmanager
def _engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    with _engine(url) as engine:
        return set(sa.inspect(engine).get_table_names())


def _schema_diff(url: str) -> list[object]:
    with _engine(url) as engine, engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def _assert_audit_append_only(url: str) -> None:
    with _engine(url) as engine:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO audit_log (at, actor_type, action, object_type) "
                    "VALUES (CURRENT_TIMESTAMP, 'system', 'test', 'migration')"
                )
            )
        for statement in ("DELETE FROM audit_log", "UPDATE audit_log SET action = 'rewritten'"):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(sa.text(statement))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT action FROM audit_log")).scalars().all() == ["test"]


def test_one_linear_history_that_can_go_down() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    assert len(scripts.get_heads()) == 1, "migrations must stay one linear history"
    revisions = list(scripts.walk_revisions())
    assert revisions, "no revision in migrations/versions"
    assert revisions[-1].down_revision is None
    for revision in revisions:
        source = Path(revision.path).read_text()
        assert "def downgrade() -> None:" in source
        assert "\n    pass\n" not in source.split("def downgrade() -> None:", 1)[1], (
            f"{revision.revision} has an empty downgrade"
        )


def test_initial_revision_installs_the_audit_triggers() -> None:
    """Autogenerate does not see triggers; a regeneration must re-add the two calls."""
    [initial] = [
        r
        for r in ScriptDirectory.from_config(alembic_config()).walk_revisions()
        if r.down_revision is None
    ]
    source = Path(initial.path).read_text()
    upgrade_src, downgrade_src = source.split("def downgrade() -> None:", 1)
    assert "audit_triggers.create()" in upgrade_src
    assert "audit_triggers.drop()" in downgrade_src
    assert Path(initial.path).parent == MIGRATIONS_DIR / "versions"


def test_sqlite_trigger_names_match_their_sql() -> None:
    from crm.audit.models import AUDIT_APPEND_ONLY_SQLITE

    created = {statement.split()[2] for statement in AUDIT_APPEND_ONLY_SQLITE}
    assert created == set(audit_triggers.SQLITE_TRIGGERS)


def test_upgrade_matches_models_and_downgrade_is_clean(url: str) -> None:
    assert _tables(url) == set()
    upgrade(url)
    assert _tables(url) == set(Base.metadata.tables) | {"alembic_version"}
    diff = _schema_diff(url)
    assert not diff, (
        "migrations differ from the models (run scripts/regen-initial-migration):\n"
        + (pprint.pformat(diff))
    )
    _assert_audit_append_only(url)

    downgrade(url, "base")
    assert _tables(url) == {"alembic_version"}

    upgrade(url)
    assert _tables(url) == set(Base.metadata.tables) | {"alembic_version"}
    assert not _schema_diff(url)
    _assert_audit_append_only(url)


def test_downgrade_removes_the_postgresql_trigger_function(pg_url: str) -> None:
    upgrade(pg_url)
    downgrade(pg_url, "base")
    with _engine(pg_url) as engine, engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT count(*) FROM pg_proc WHERE proname = 'audit_log_append_only'")
        ).scalar_one()
    assert found == 0


def test_offline_sql_includes_the_trigger() -> None:
    """`alembic upgrade --sql` is how a DBA reviews the schema; it must not need a database."""
    config = alembic_config("postgresql+psycopg://nobody@127.0.0.1:1/none")
    buffer = io.StringIO()
    config.output_buffer = buffer
    command.upgrade(config, "head", sql=True)
    sql = buffer.getvalue()
    assert "CREATE TABLE audit_log" in sql
    assert "CREATE TRIGGER audit_log_append_only" in sql


@pytest.fixture
def sqlite_settings(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> Iterator[str]:
    """Point settings at a SQLite file for one CLI run, then give the suite its own back.

    `db upgrade` reads only the settings (Alembic opens its own engine), so the run's
    cached engine, bound to the test database, is left alone and checked to be so.
    """
    engine_before = crm_db.get_engine()
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    crm_config.get_settings.cache_clear()
    yield sqlite_url
    monkeypatch.undo()
    crm_config.get_settings.cache_clear()
    assert crm_db.get_engine() is engine_before
    assert not crm_config.get_settings().is_sqlite


def test_cli_db_upgrade_and_downgrade(sqlite_settings: str) -> None:
    from voice_gateway.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "database at head" in result.output
    assert _tables(sqlite_settings) == set(Base.metadata.tables) | {"alembic_version"}

    result = runner.invoke(app, ["db", "downgrade", "base"])
    assert result.exit_code == 0, result.output
    assert _tables(sqlite_settings) == {"alembic_version"}
