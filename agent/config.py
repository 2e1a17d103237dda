"""The agent's one settings object: which LLM answers, where, and how long we wait.

Provider choice is configuration, never a code edit. The timeouts are the agent's
budget on a live phone call: a caller hears silence while we wait for the first token,
so that wait is bounded apart from the whole reply.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from crm.config import Environment, refuse_if_any


class LLMProvider(StrEnum):
    openai = "openai"
    """The OpenAI SDK against api.openai.com or any OpenAI-compatible server."""
    offline = "offline"
    """Deterministic rule-based qualifier (Spanish and English); no network."""
    fake = "fake"
    """Scripted replies with configurable latency, for tests and benchmarks."""


class AgentSettings(BaseSettings):
    # Empty values count as unset, so a copied .env.example with blanks keeps the defaults.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    environment: Environment = Field(default=Environment.development, alias="ENVIRONMENT")
    llm_provider: LLMProvider = Field(default=LLMProvider.offline, alias="LLM_PROVIDER")
    openai_api_key: SecretStr | None = Field(default=None, alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(
        default=None,
        alias="OPENAI_BASE_URL",
        description="OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp); unset: OpenAI.",
    )
    openai_model: str = Field(default="gpt-4o-mini", alias="OPENAI_MODEL", min_length=1)
    llm_connect_timeout_s: float = Field(default=3.0, alias="LLM_CONNECT_TIMEOUT_S", gt=0)
    llm_first_token_timeout_s: float = Field(
        default=4.0, alias="LLM_FIRST_TOKEN_TIMEOUT_S", gt=0, le=60
    )
    llm_timeout_s: float = Field(default=30.0, alias="LLM_TIMEOUT_S", gt=0, le=600)
    llm_max_retries: int = Field(default=1, alias="LLM_MAX_RETRIES", ge=0, le=5)
    fake_llm_latency_ms: int = Field(default=0, alias="FAKE_LLM_LATENCY_MS", ge=0, le=60_000)
    fake_llm_token_interval_ms: int = Field(
        default=0, alias="FAKE_LLM_TOKEN_INTERVAL_MS", ge=0, le=5_000
    )

    @field_validator("openai_api_key")
    @classmethod
    def _blank_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return value

    @field_validator("openai_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                "OPENAI_BASE_URL must be an http(s) URL, e.g. http://127.0.0.1:8000/v1"
            )
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> AgentSettings:
        if self.llm_first_token_timeout_s > self.llm_timeout_s:
            raise ValueError("LLM_FIRST_TOKEN_TIMEOUT_S cannot exceed LLM_TIMEOUT_S")
        if self.environment is Environment.production:
            refuse_if_any("agent", self.production_problems())
        return self

    def production_problems(self) -> list[str]:
        problems: list[str] = []
        if self.llm_provider is LLMProvider.fake:
            problems.append("LLM_PROVIDER=fake answers callers with a test script")
        if self.llm_provider is LLMProvider.openai and self.openai_api_key is None:
            problems.append(
                "LLM_PROVIDER=openai needs OPENAI_API_KEY (any non-empty value for a "
                "self-hosted server that ignores it)"
            )
        return problems


@lru_cache
def get_settings() -> AgentSettings:
    return AgentSettings()
