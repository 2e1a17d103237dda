"""The three settings objects: defaults, parsing, production refusals, secrets kept out of repr."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from agent import config as agent_config
from agent.config import AgentSettings, LLMProvider
from crm import config as crm_config
from crm.config import CrmSettings, Environment, UnsafeSettingsError
from voice_gateway import config as gateway_config
from voice_gateway.config import GatewaySettings, SettingsError, STTProvider, TTSProvider, check_all

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (CrmSettings, AgentSettings, GatewaySettings)
ALIASES = sorted(
    {field.alias for cls in SETTINGS_CLASSES for field in cls.model_fields.values() if field.alias}
)

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "twilio-token-that-must-stay-secret"
OPENAI_KEY = "sk-openai-key-that-must-stay-secret"
DB_PASSWORD = "db-password-that-must-stay-secret"
REDIS_PASSWORD = "redis-password-that-must-stay-secret"
CALL_TOKEN_SECRET = "call-token-secret-that-must-stay-secret"

#: A production configuration that passes every check; each test breaks one thing.
SAFE_PRODUCTION = {
    "ENVIRONMENT": "production",
    "DATABASE_URL": f"postgresql://va:{DB_PASSWORD}@db:5432/voiceagent",
    "REDIS_URL": f"redis://:{REDIS_PASSWORD}@redis:6379/0",
    "LLM_PROVIDER": "openai",
    "OPENAI_API_KEY": OPENAI_KEY,
    "PUBLIC_HOST": "voice.example.com",
    "TWILIO_ACCOUNT_SID": SID,
    "TWILIO_AUTH_TOKEN": TOKEN,
    "CALL_TOKEN_SECRET": CALL_TOKEN_SECRET,
    "STT_PROVIDER": "google",
    "TTS_PROVIDER": "google",
}

S = TypeVar("S", bound=BaseSettings)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with none of our variables (the suite sets some), and no .env."""
    for alias in ALIASES:
        monkeypatch.delenv(alias, raising=False)
    return monkeypatch


def build(cls: type[S], env: pytest.MonkeyPatch, **values: str) -> S:
    for name, value in values.items():
        env.setenv(name, value)
    return cls(_env_file=None)


def problems_of(exc: pytest.ExceptionInfo[ValidationError]) -> list[str]:
    [error] = exc.value.errors()
    cause = error["ctx"]["error"]
    assert isinstance(cause, UnsafeSettingsError)
    return cause.problems


def production_without(name: str, **changes: str) -> dict[str, str]:
    values = {k: v for k, v in SAFE_PRODUCTION.items() if k != name}
    values.update(changes)
    return values


# ------------------------------------------------------------------------- crm


def test_crm_defaults_are_the_embedded_mode(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = build(CrmSettings, env, DATA_DIR=str(tmp_path))
    assert settings.environment is Environment.development
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'voiceagent.sqlite3'}"
    assert settings.is_sqlite
    assert settings.redis_url is None


@pytest.mark.parametrize(
    "given",
    [
        "postgres://u:p@h:5432/d",
        "postgresql://u:p@h:5432/d",
        "postgresql+psycopg2://u:p@h:5432/d",
        "postgresql+psycopg://u:p@h:5432/d",
    ],
)
def test_crm_postgres_urls_use_the_installed_driver(env: pytest.MonkeyPatch, given: str) -> None:
    settings = build(CrmSettings, env, DATABASE_URL=given)
    assert settings.database_url == "postgresql+psycopg://u:p@h:5432/d"
    assert not settings.is_sqlite


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DATABASE_URL", "mysql://u@h/d", "postgresql:// or sqlite:///"),
        ("REDIS_URL", "http://redis:6379", "redis://"),
        ("DEFAULT_PHONE_REGION", "USA", "two-letter"),
        ("DB_POOL_SIZE", "0", "greater than or equal to 1"),
    ],
)
def test_crm_rejects_malformed_values(
    env: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        build(CrmSettings, env, **{name: value})


def test_crm_region_is_upper_cased(env: pytest.MonkeyPatch) -> None:
    assert build(CrmSettings, env, DEFAULT_PHONE_REGION="es").default_region == "ES"


def test_crm_empty_values_mean_unset(env: pytest.MonkeyPatch) -> None:
    settings = build(CrmSettings, env, DATABASE_URL="", REDIS_URL="", RECORDINGS_DIR="")
    assert settings.database_url is None
    assert settings.redis_url is None
    assert settings.recordings_dir is None


def test_crm_production_accepts_a_safe_configuration(env: pytest.MonkeyPatch) -> None:
    settings = build(CrmSettings, env, **SAFE_PRODUCTION)
    assert settings.is_production
    assert settings.production_problems() == []


def test_crm_production_lists_every_problem_at_once(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as exc:
        build(CrmSettings, env, ENVIRONMENT="production", DB_ECHO="true")
    problems = problems_of(exc)
    assert len(problems) == 3
    assert any("DATABASE_URL must point at PostgreSQL" in p for p in problems)
    assert any("REDIS_URL must be set" in p for p in problems)
    assert any("DB_ECHO" in p for p in problems)
    assert "ENVIRONMENT=production" in str(exc.value)


def test_crm_production_refuses_sqlite(env: pytest.MonkeyPatch) -> None:
    values = production_without("DATABASE_URL", DATABASE_URL="sqlite:////srv/va.sqlite3")
    with pytest.raises(ValidationError) as exc:
        build(CrmSettings, env, **values)
    assert problems_of(exc) == ["DATABASE_URL must point at PostgreSQL in production"]


def test_crm_repr_hides_connection_passwords(env: pytest.MonkeyPatch) -> None:
    settings = build(CrmSettings, env, **SAFE_PRODUCTION)
    assert DB_PASSWORD not in repr(settings)
    assert REDIS_PASSWORD not in repr(settings)
    assert DB_PASSWORD not in str(settings)


# ----------------------------------------------------------------------- agent


def test_agent_defaults_run_offline(env: pytest.MonkeyPatch) -> None:
    settings = build(AgentSettings, env)
    assert settings.llm_provider is LLMProvider.offline
    assert settings.openai_api_key is None
    assert settings.openai_base_url is None


def test_agent_reads_an_openai_compatible_server(env: pytest.MonkeyPatch) -> None:
    settings = build(
        AgentSettings,
        env,
        LLM_PROVIDER="openai",
        OPENAI_BASE_URL="http://127.0.0.1:8000/v1/",
        OPENAI_MODEL="qwen2.5-7b-instruct",
        OPENAI_API_KEY=OPENAI_KEY,
        FAKE_LLM_LATENCY_MS="250",
    )
    assert settings.openai_base_url == "http://127.0.0.1:8000/v1"
    assert settings.openai_model == "qwen2.5-7b-instruct"
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == OPENAI_KEY
    assert settings.fake_llm_latency_ms == 250


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"LLM_PROVIDER": "anthropic"}, "openai"),
        ({"OPENAI_BASE_URL": "127.0.0.1:8000"}, "http"),
        ({"LLM_FIRST_TOKEN_TIMEOUT_S": "10", "LLM_TIMEOUT_S": "5"}, "cannot exceed"),
        ({"FAKE_LLM_LATENCY_MS": "-1"}, "greater than or equal to 0"),
    ],
)
def test_agent_rejects_malformed_values(
    env: pytest.MonkeyPatch, values: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        build(AgentSettings, env, **values)


def test_agent_development_allows_the_fake(env: pytest.MonkeyPatch) -> None:
    assert build(AgentSettings, env, LLM_PROVIDER="fake").llm_provider is LLMProvider.fake


def test_agent_production_refuses_the_fake(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as exc:
        build(AgentSettings, env, **production_without("LLM_PROVIDER", LLM_PROVIDER="fake"))
    assert problems_of(exc) == ["LLM_PROVIDER=fake answers callers with a test script"]


@pytest.mark.parametrize("key", [None, "", "   "])
def test_agent_production_refuses_openai_without_a_key(
    env: pytest.MonkeyPatch, key: str | None
) -> None:
    values = production_without("OPENAI_API_KEY")
    if key is not None:
        values["OPENAI_API_KEY"] = key
    with pytest.raises(ValidationError) as exc:
        build(AgentSettings, env, **values)
    [problem] = problems_of(exc)
    assert "OPENAI_API_KEY" in problem


def test_agent_production_offline_needs_no_key(env: pytest.MonkeyPatch) -> None:
    values = production_without("OPENAI_API_KEY", LLM_PROVIDER="offline")
    assert build(AgentSettings, env, **values).production_problems() == []


def test_agent_repr_hides_the_api_key(env: pytest.MonkeyPatch) -> None:
    settings = build(AgentSettings, env, **SAFE_PRODUCTION)
    assert OPENAI_KEY not in repr(settings)
    assert OPENAI_KEY not in str(settings)
    assert OPENAI_KEY not in str(settings.model_dump())


# --------------------------------------------------------------------- gateway


def test_gateway_defaults(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = build(GatewaySettings, env, DATA_DIR=str(tmp_path))
    assert settings.twilio_validate_signatures is True
    assert settings.stt_provider is STTProvider.pocketsphinx
    assert settings.tts_provider is TTSProvider.espeak
    assert settings.resolved_recordings_dir == tmp_path / "recordings"
    assert settings.public_ws_base is None


def test_gateway_recordings_dir_can_move(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = build(GatewaySettings, env, RECORDINGS_DIR=str(tmp_path / "rec"))
    assert settings.resolved_recordings_dir == tmp_path / "rec"


@pytest.mark.parametrize(
    ("given", "http", "ws"),
    [
        ("voice.example.com", "https://voice.example.com", "wss://voice.example.com"),
        ("https://voice.example.com/", "https://voice.example.com", "wss://voice.example.com"),
        (
            "voice.example.com:8443",
            "https://voice.example.com:8443",
            "wss://voice.example.com:8443",
        ),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000", "ws://127.0.0.1:8000"),
    ],
)
def test_gateway_public_urls(env: pytest.MonkeyPatch, given: str, http: str, ws: str) -> None:
    settings = build(GatewaySettings, env, PUBLIC_HOST=given)
    assert settings.public_http_base == http
    assert settings.public_ws_base == ws


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"PUBLIC_HOST": "voice.example.com/twilio"}, "no path"),
        ({"PUBLIC_HOST": "ftp://voice.example.com"}, "https://"),
        ({"TWILIO_ACCOUNT_SID": "AC123"}, "32 hex digits"),
        ({"TWILIO_ACCOUNT_SID": "XX" + "0" * 32}, "32 hex digits"),
        ({"STT_PROVIDER": "whisper"}, "google"),
        ({"TTS_PROVIDER": "polly"}, "espeak"),
        ({"VAD": "energy"}, "webrtc"),
        ({"MAX_CONCURRENT_CALLS": "0"}, "greater than or equal to 1"),
        ({"CALL_TOKEN_TTL_S": "5"}, "greater than or equal to 10"),
        ({"TWILIO_VALIDATE_SIGNATURES": "maybe"}, "bool"),
    ],
)
def test_gateway_rejects_malformed_values(
    env: pytest.MonkeyPatch, values: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        build(GatewaySettings, env, **values)


def test_gateway_development_allows_fakes_and_unsigned_webhooks(env: pytest.MonkeyPatch) -> None:
    settings = build(
        GatewaySettings,
        env,
        STT_PROVIDER="fake",
        TTS_PROVIDER="fake",
        TWILIO_VALIDATE_SIGNATURES="false",
        FAKE_STT_LATENCY_MS="120",
        FAKE_TTS_LATENCY_MS="80",
    )
    assert settings.production_problems()  # would be refused, but development allows it
    assert settings.fake_stt_latency_ms == 120
    assert settings.fake_tts_latency_ms == 80


def test_gateway_production_accepts_a_safe_configuration(env: pytest.MonkeyPatch) -> None:
    assert build(GatewaySettings, env, **SAFE_PRODUCTION).production_problems() == []


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            production_without("", TWILIO_VALIDATE_SIGNATURES="false"),
            "TWILIO_VALIDATE_SIGNATURES=false",
        ),
        (production_without("TWILIO_AUTH_TOKEN"), "TWILIO_AUTH_TOKEN is required"),
        (production_without("TWILIO_AUTH_TOKEN", TWILIO_AUTH_TOKEN=" "), "TWILIO_AUTH_TOKEN"),
        (production_without("TWILIO_ACCOUNT_SID"), "TWILIO_ACCOUNT_SID is required"),
        (production_without("CALL_TOKEN_SECRET"), "CALL_TOKEN_SECRET"),
        (production_without("CALL_TOKEN_SECRET", CALL_TOKEN_SECRET="short"), "32+"),
        (production_without("PUBLIC_HOST"), "PUBLIC_HOST is required"),
        (
            production_without("PUBLIC_HOST", PUBLIC_HOST="http://voice.example.com"),
            "PUBLIC_HOST must be served over HTTPS",
        ),
        (production_without("STT_PROVIDER", STT_PROVIDER="fake"), "STT_PROVIDER=fake"),
        (production_without("TTS_PROVIDER", TTS_PROVIDER="fake"), "TTS_PROVIDER=fake"),
        (
            production_without("", GOOGLE_APPLICATION_CREDENTIALS="/nonexistent/sa.json"),
            "GOOGLE_APPLICATION_CREDENTIALS names a missing file",
        ),
    ],
)
def test_gateway_production_refuses(
    env: pytest.MonkeyPatch, values: dict[str, str], expected: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        build(GatewaySettings, env, **values)
    [problem] = problems_of(exc)
    assert expected in problem


def test_gateway_production_accepts_existing_google_credentials(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    credentials = tmp_path / "sa.json"
    credentials.write_text("{}")
    values = production_without("", GOOGLE_APPLICATION_CREDENTIALS=str(credentials))
    assert build(GatewaySettings, env, **values).google_application_credentials == credentials


def test_gateway_production_lists_every_problem_at_once(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as exc:
        build(
            GatewaySettings,
            env,
            ENVIRONMENT="production",
            TWILIO_VALIDATE_SIGNATURES="false",
            STT_PROVIDER="fake",
            TTS_PROVIDER="fake",
        )
    problems = problems_of(exc)
    assert len(problems) == 7
    message = str(exc.value)
    for name in ("TWILIO_VALIDATE_SIGNATURES", "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID"):
        assert name in message
    for name in ("PUBLIC_HOST", "STT_PROVIDER", "TTS_PROVIDER"):
        assert name in message


def test_gateway_repr_hides_the_auth_token(env: pytest.MonkeyPatch) -> None:
    settings = build(GatewaySettings, env, **SAFE_PRODUCTION)
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings)
    assert settings.twilio_auth_token is not None
    assert settings.twilio_auth_token.get_secret_value() == TOKEN


# ------------------------------------------------------------------ all three


def test_check_all_in_development(env: pytest.MonkeyPatch) -> None:
    crm_settings, agent_settings, gateway_settings = check_all(_env_file=None)
    assert crm_settings.environment is Environment.development
    assert agent_settings.llm_provider is LLMProvider.offline
    assert gateway_settings.twilio_validate_signatures


def test_check_all_names_every_problem_of_every_package(env: pytest.MonkeyPatch) -> None:
    env.setenv("ENVIRONMENT", "production")
    env.setenv("LLM_PROVIDER", "fake")
    env.setenv("STT_PROVIDER", "fake")
    with pytest.raises(SettingsError) as exc:
        check_all(_env_file=None)
    message = str(exc.value)
    assert message.startswith("voiceagent cannot start with these settings:")
    assert "crm: DATABASE_URL must point at PostgreSQL" in message
    assert "agent: LLM_PROVIDER=fake" in message
    assert "gateway: STT_PROVIDER=fake" in message
    assert "gateway: PUBLIC_HOST is required" in message


def test_check_all_reports_malformed_values_by_variable(env: pytest.MonkeyPatch) -> None:
    env.setenv("REDIS_URL", "http://redis")
    with pytest.raises(SettingsError) as exc:
        check_all(_env_file=None)
    assert exc.value.problems == [
        "crm: REDIS_URL: REDIS_URL must be a redis://, rediss:// or unix:// URL"
    ]


def test_check_all_keeps_secrets_out_of_its_message(env: pytest.MonkeyPatch) -> None:
    for name, value in SAFE_PRODUCTION.items():
        env.setenv(name, value)
    env.setenv("TWILIO_VALIDATE_SIGNATURES", "false")
    env.setenv("PUBLIC_HOST", "http://voice.example.com")
    with pytest.raises(SettingsError) as exc:
        check_all(_env_file=None)
    for secret in (TOKEN, OPENAI_KEY, DB_PASSWORD, REDIS_PASSWORD, CALL_TOKEN_SECRET):
        assert secret not in str(exc.value)


def test_settings_read_a_dotenv_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("LLM_PROVIDER=fake\nMAX_CONCURRENT_CALLS=7\nPAGE_SIZE_MAX=50\n")
    kwargs: dict[str, Any] = {"_env_file": dotenv}
    assert AgentSettings(**kwargs).llm_provider is LLMProvider.fake
    assert GatewaySettings(**kwargs).max_concurrent_calls == 7
    assert CrmSettings(**kwargs).page_size_max == 50


def test_environment_variables_win_over_the_dotenv_file(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("MAX_CALL_SECONDS=60\n")
    env.setenv("MAX_CALL_SECONDS", "120")
    kwargs: dict[str, Any] = {"_env_file": dotenv}
    assert GatewaySettings(**kwargs).max_call_seconds == 120


def test_get_settings_is_cached_per_package() -> None:
    for module in (crm_config, agent_config, gateway_config):
        assert module.get_settings() is module.get_settings()


# ---------------------------------------------------------------- .env.example


def _example_variables() -> dict[str, int]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    found: dict[str, int] = {}
    for number, line in enumerate(lines):
        match = re.match(r"^#?\s?([A-Z][A-Z0-9_]*)=", line)
        if match:
            found[match.group(1)] = number
    return found


def test_env_example_lists_every_setting() -> None:
    listed = _example_variables()
    missing = [alias for alias in ALIASES if alias not in listed]
    assert not missing, f".env.example is missing {missing}"


def test_env_example_comments_every_variable() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    for name, number in _example_variables().items():
        above = lines[number - 1] if number else ""
        is_comment = re.match(r"^# (?![A-Z][A-Z0-9_]*=)\S", above) is not None
        assert is_comment, f"{name} in .env.example needs a one-line comment above it"


def test_env_example_values_load(env: pytest.MonkeyPatch) -> None:
    """The example itself, copied to .env as is, must be a valid development setup."""
    kwargs: dict[str, Any] = {"_env_file": ROOT / ".env.example"}
    for cls in SETTINGS_CLASSES:
        cls(**kwargs)
