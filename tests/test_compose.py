"""The production stack description: valid for docker-compose, and true to the code.

`docker-compose config` proves the file is well-formed; the structural checks prove it
runs what exists (the CLI commands, the Celery app), waits for what it needs, and keeps
one beat.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from celery.app.utils import find_app

from crm.config import CrmSettings
from crm.worker import celery_app
from voice_gateway.app import create_app
from voice_gateway.cli import app as cli_app

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
APP_SERVICES = ("migrate", "api", "worker", "beat")
PASSWORD = "compose-test-password"

INSTALL_HINT = (
    "docker-compose is not installed, so docker-compose.yml cannot be validated. "
    "Install it with 'apt-get install docker-compose' (Debian; ./dev test does this when "
    "run as root) or provide the 'docker compose' plugin."
)


def _compose_command() -> list[str] | None:
    standalone = shutil.which("docker-compose")
    if standalone:
        return [standalone]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(  # noqa: S603 - fixed arguments
            [docker, "compose", "version"], capture_output=True, check=False, timeout=30
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    command = _compose_command()
    if command is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return command


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the stack with .env made from .env.example, as the README says to do."""
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    return tmp_path


def _run_config(
    compose: list[str], project: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    return subprocess.run(  # noqa: S603 - our own compose binary and file
        [*compose, "-f", str(project / "docker-compose.yml"), "config", "-q"],
        cwd=project,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_docker_compose_accepts_the_file(compose: list[str], project: Path) -> None:
    result = _run_config(compose, project, {"POSTGRES_PASSWORD": PASSWORD})
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"


def test_docker_compose_demands_a_database_password(compose: list[str], project: Path) -> None:
    result = _run_config(compose, project, {})
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


# ------------------------------------------------------------------ structure


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    found: dict[str, dict[str, Any]] = document["services"]
    return found


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form of environment"
    return {k: re.sub(r"\$\{POSTGRES_PASSWORD[^}]*\}", PASSWORD, str(v)) for k, v in env.items()}


def _cli_command_exists(path: list[str]) -> bool:
    """Walk the Typer tree (typer ships its own click, so no isinstance on click types)."""
    command: Any = typer.main.get_command(cli_app)
    for name in path:
        children = getattr(command, "commands", None)
        if not children or name not in children:
            return False
        command = children[name]
    return True


def test_the_stack_has_its_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"postgres", "redis", *APP_SERVICES}
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])


def test_every_service_has_a_healthcheck_or_a_reason(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck")
        reason = service.get("x-healthcheck-reason", "")
        if check:
            assert not check.get("disable"), f"{name} disables its healthcheck"
            assert check["test"], f"{name} has an empty healthcheck"
        else:
            assert len(reason.strip()) > 20, f"{name}: add a healthcheck or x-healthcheck-reason"


def test_healthchecks_probe_the_right_thing(services: dict[str, dict[str, Any]]) -> None:
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    api_check = " ".join(services["api"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/healthz" in api_check
    assert "/healthz" in {getattr(route, "path", None) for route in create_app().routes}
    assert "celery -A crm.worker inspect ping" in " ".join(
        services["worker"]["healthcheck"]["test"]
    )


def test_exactly_one_beat(services: dict[str, dict[str, Any]]) -> None:
    beat = services["beat"]
    assert beat.get("deploy", {}).get("replicas", 1) == 1
    assert beat.get("scale", 1) == 1
    beats = [n for n, s in services.items() if "beat" in (s.get("command") or [])]
    assert beats == ["beat"]


def test_commands_name_the_cli_and_the_celery_app(services: dict[str, dict[str, Any]]) -> None:
    migrate, api = services["migrate"]["command"], services["api"]["command"]
    assert migrate == ["voiceagent", "db", "upgrade"]
    assert _cli_command_exists(["db", "upgrade"])
    assert api[:2] == ["voiceagent", "serve"]
    assert _cli_command_exists(["serve"])
    assert api[api.index("--host") + 1] == "0.0.0.0"  # noqa: S104 - inside its container
    assert api[api.index("--port") + 1] == "8000"
    assert services["worker"]["command"][:4] == ["celery", "-A", "crm.worker", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "crm.worker", "beat"]
    assert find_app("crm.worker") is celery_app


def test_start_order(services: dict[str, dict[str, Any]]) -> None:
    def waits_for(name: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in services[name]["depends_on"].items()}

    assert waits_for("migrate") == {"postgres": "service_healthy"}
    for name in ("api", "worker", "beat"):
        conditions = waits_for(name)
        assert conditions["migrate"] == "service_completed_successfully", name
        assert conditions["redis"] == "service_healthy", name
    assert services["migrate"]["restart"] == "no"


def test_app_services_run_production_against_the_stack(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in APP_SERVICES:
        service = services[name]
        assert service["env_file"] == ".env", name
        env = _environment(service)
        assert env["ENVIRONMENT"] == "production"
        assert "@postgres:5432/" in env["DATABASE_URL"]
        assert env["REDIS_URL"].startswith("redis://redis:6379/")
        for field in CrmSettings.model_fields.values():
            monkeypatch.delenv(field.alias or "", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = CrmSettings(_env_file=None)
        assert settings.production_problems() == [], name


def test_image_is_slim_non_root_and_without_dev_dependencies() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines() if line.strip()]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms
    assert all(line.startswith("FROM python:3.11-slim") for line in froms)
    users = [line for line in lines if line.startswith("USER ")]
    assert users
    assert users[-1] not in ("USER root", "USER 0")
    installs = " ".join(line for line in lines if "pip install" in line or "pip wheel" in line)
    assert "[dev]" not in installs
    assert " -e " not in installs
    ignored = (ROOT / ".dockerignore").read_text().split()
    for never_in_image in (".env", ".venv", ".git"):
        assert never_in_image in ignored
