"""The CRM's one settings object, and what the three packages' settings share.

Read from the environment (and `.env`), so the same code runs on the embedded default
(SQLite file, no Redis) and in production (PostgreSQL, Redis). Production refuses the
settings that would quietly lose data or leak across tenants, listing every problem at
once so an operator fixes the deployment in one pass instead of one restart per mistake.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class UnsafeSettingsError(ValueError):
    """A production configuration that must not start."""

    def __init__(self, scope: str, problems: Iterable[str]) -> None:
        self.scope = scope
        self.problems = list(problems)
        listed = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"unsafe {scope} settings for ENVIRONMENT=production:\n{listed}")


def refuse_if_any(scope: str, problems: list[str]) -> None:
    """Raise one error naming every problem; pydantic wraps it in a ValidationError."""
    if problems:
        raise UnsafeSettingsError(scope, problems)


#: Every spelling of PostgreSQL that people paste from hosting dashboards; psycopg 3 is
#: the one driver installed, so a bare `postgresql://` would ask for psycopg2 and fail.
_POSTGRES_SCHEMES = ("postgres://", "postgresql://", "postgresql+psycopg2://")
_DATABASE_SCHEMES = ("sqlite://", "sqlite+pysqlite://", "postgresql+psycopg://")
_REDIS_SCHEMES = ("redis", "rediss", "unix")


def normalize_database_url(url: str) -> str:
    """`url` with the PostgreSQL scheme spelled as the installed driver needs it."""
    for scheme in _POSTGRES_SCHEMES:
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


class CrmSettings(BaseSettings):
    # Empty values count as unset, so a copied .env.example with blanks keeps the defaults.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    environment: Environment = Field(default=Environment.development, alias="ENVIRONMENT")
    data_dir: Path = Field(default=Path("./var"), alias="DATA_DIR")
    # repr=False: both URLs may carry a password, and settings objects end up in logs.
    database_url: str | None = Field(default=None, alias="DATABASE_URL", repr=False)
    redis_url: str | None = Field(default=None, alias="REDIS_URL", repr=False)
    db_pool_size: int = Field(default=10, alias="DB_POOL_SIZE", ge=1, le=200)
    db_echo: bool = Field(default=False, alias="DB_ECHO")
    import_max_bytes: int = Field(default=10 * 1024 * 1024, alias="IMPORT_MAX_BYTES", gt=0)
    import_max_rows: int = Field(default=50_000, alias="IMPORT_MAX_ROWS", gt=0)
    default_region: str = Field(
        default="US",
        alias="DEFAULT_PHONE_REGION",
        description="Region assumed for phone numbers written without a country code.",
    )
    page_size_max: int = Field(default=200, alias="PAGE_SIZE_MAX", ge=1)
    recordings_dir: Path | None = Field(
        default=None,
        alias="RECORDINGS_DIR",
        description="Where call recordings live (default DATA_DIR/recordings); the API "
        "serves no file outside it.",
    )
    celery_result_expires_s: int = Field(
        default=24 * 3600,
        alias="CELERY_RESULT_EXPIRES_S",
        ge=60,
        description="How long Celery keeps task results in Redis.",
    )

    @field_validator("default_region")
    @classmethod
    def _upper_region(cls, value: str) -> str:
        value = value.upper()
        if len(value) != 2 or not value.isalpha():
            raise ValueError("DEFAULT_PHONE_REGION is a two-letter country code, e.g. US or ES")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if not value:
            return None
        value = normalize_database_url(value.strip())
        if not value.startswith(_DATABASE_SCHEMES):
            raise ValueError("DATABASE_URL must be a postgresql:// or sqlite:/// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _known_redis(cls, value: str | None) -> str | None:
        if not value:
            return None
        value = value.strip()
        if urlsplit(value).scheme not in _REDIS_SCHEMES:
            raise ValueError("REDIS_URL must be a redis://, rediss:// or unix:// URL")
        return value

    @property
    def resolved_database_url(self) -> str:
        """`DATABASE_URL`, or the embedded SQLite file under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'voiceagent.sqlite3').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.production

    def production_problems(self) -> list[str]:
        problems: list[str] = []
        if not self.database_url or self.database_url.startswith("sqlite"):
            problems.append("DATABASE_URL must point at PostgreSQL in production")
        if not self.redis_url:
            problems.append("REDIS_URL must be set in production (Celery broker)")
        if self.db_echo:
            problems.append("DB_ECHO logs every statement and its data; turn it off")
        return problems

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> CrmSettings:
        if self.is_production:
            refuse_if_any("crm", self.production_problems())
        return self


@lru_cache
def get_settings() -> CrmSettings:
    return CrmSettings()
