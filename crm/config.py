"""The CRM's one settings object.

Read from the environment (and `.env`), so the same code runs on the embedded default
(SQLite file, no Redis) and in production (PostgreSQL, Redis). Production refuses the
settings that would quietly lose data or leak across tenants.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class UnsafeSettingsError(ValueError):
    """A production configuration that must not start."""


class CrmSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    environment: Environment = Field(default=Environment.development, alias="ENVIRONMENT")
    data_dir: Path = Field(default=Path("./var"), alias="DATA_DIR")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    redis_url: str | None = Field(default=None, alias="REDIS_URL")
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

    @field_validator("default_region")
    @classmethod
    def _upper_region(cls, value: str) -> str:
        return value.upper()

    @property
    def resolved_database_url(self) -> str:
        """`DATABASE_URL`, or the embedded SQLite file under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'voiceagent.sqlite3').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> CrmSettings:
        if self.environment is not Environment.production:
            return self
        problems: list[str] = []
        if not self.database_url or self.database_url.startswith("sqlite"):
            problems.append("DATABASE_URL must point at PostgreSQL in production")
        if not self.redis_url:
            problems.append("REDIS_URL must be set in production (Celery broker)")
        if self.db_echo:
            problems.append("DB_ECHO logs every statement and its data; turn it off")
        if problems:
            raise UnsafeSettingsError("; ".join(problems))
        return self


@lru_cache
def get_settings() -> CrmSettings:
    return CrmSettings()
