"""The gateway's one settings object: Twilio, the public address, speech providers, limits.

Production refuses what would let anyone on the internet drive calls (unsigned webhooks,
no auth token), what Twilio cannot reach (no public HTTPS host), and test doubles that
would talk to real callers. `check_all` loads the three packages' settings together so a
server refuses to start with one message listing every problem.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.config import AgentSettings
from crm.config import CrmSettings, Environment, UnsafeSettingsError, refuse_if_any


class STTProvider(StrEnum):
    google = "google"
    pocketsphinx = "pocketsphinx"
    fake = "fake"


class TTSProvider(StrEnum):
    google = "google"
    espeak = "espeak"
    fake = "fake"


class VADKind(StrEnum):
    webrtc = "webrtc"
    silero = "silero"


class TelephonyProvider(StrEnum):
    twilio = "twilio"
    fake = "fake"


class AmdMode(StrEnum):
    """What an outbound call does when Twilio's answering-machine detection says machine."""

    off = "off"  # no detection: the agent talks to whatever answers
    hangup = "hangup"  # hang up as soon as a machine is detected
    voicemail = "voicemail"  # wait for the beep, leave a short message, hang up


class GatewaySettings(BaseSettings):
    # Empty values count as unset, so a copied .env.example with blanks keeps the defaults.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    environment: Environment = Field(default=Environment.development, alias="ENVIRONMENT")
    data_dir: Path = Field(default=Path("./var"), alias="DATA_DIR")
    public_host: str | None = Field(
        default=None,
        alias="PUBLIC_HOST",
        description="Host (and port) Twilio reaches us at: voice.example.com. "
        "A leading https:// is accepted; http:// means plain ws:// (development only).",
    )
    twilio_account_sid: str | None = Field(default=None, alias="TWILIO_ACCOUNT_SID")
    twilio_auth_token: SecretStr | None = Field(default=None, alias="TWILIO_AUTH_TOKEN")
    twilio_validate_signatures: bool = Field(default=True, alias="TWILIO_VALIDATE_SIGNATURES")
    stt_provider: STTProvider = Field(default=STTProvider.pocketsphinx, alias="STT_PROVIDER")
    tts_provider: TTSProvider = Field(default=TTSProvider.espeak, alias="TTS_PROVIDER")
    vad: VADKind = Field(default=VADKind.webrtc, alias="VAD")
    telephony_provider: TelephonyProvider = Field(
        default=TelephonyProvider.twilio, alias="TELEPHONY_PROVIDER"
    )
    fake_stt_latency_ms: int = Field(default=0, alias="FAKE_STT_LATENCY_MS", ge=0, le=60_000)
    fake_tts_latency_ms: int = Field(default=0, alias="FAKE_TTS_LATENCY_MS", ge=0, le=60_000)
    fake_tts_ms_per_char: int = Field(default=60, alias="FAKE_TTS_MS_PER_CHAR", ge=1, le=1000)
    google_tts_voice_es: str = Field(
        default="es-US-Neural2-A", alias="GOOGLE_TTS_VOICE_ES", pattern=r"^[a-z]{2,3}-\w+-\S+$"
    )
    google_tts_voice_en: str = Field(
        default="en-US-Neural2-F", alias="GOOGLE_TTS_VOICE_EN", pattern=r"^[a-z]{2,3}-\w+-\S+$"
    )
    google_tts_timeout_s: float = Field(default=5.0, alias="GOOGLE_TTS_TIMEOUT_S", gt=0, le=60)
    google_tts_endpoint: str | None = Field(default=None, alias="GOOGLE_TTS_ENDPOINT")
    espeak_rate_wpm: int = Field(default=165, alias="ESPEAK_RATE_WPM", ge=80, le=450)
    espeak_pitch: int = Field(default=50, alias="ESPEAK_PITCH", ge=0, le=100)
    tts_cache_max_bytes: int = Field(default=16 * 1024 * 1024, alias="TTS_CACHE_MAX_BYTES", ge=0)
    tts_cache_on_disk: bool = Field(default=True, alias="TTS_CACHE_ON_DISK")
    google_application_credentials: Path | None = Field(
        default=None, alias="GOOGLE_APPLICATION_CREDENTIALS"
    )
    google_stt_model: str = Field(default="telephony", alias="GOOGLE_STT_MODEL", min_length=1)
    google_stt_languages: dict[str, str] = Field(
        default={"es": "es-US", "en": "en-US"}, alias="GOOGLE_STT_LANGUAGES"
    )
    google_stt_restart_s: float = Field(default=240, alias="GOOGLE_STT_RESTART_S", ge=5, le=290)
    google_stt_endpoint: str | None = Field(default=None, alias="GOOGLE_STT_ENDPOINT")
    max_concurrent_calls: int = Field(default=50, alias="MAX_CONCURRENT_CALLS", ge=1, le=10_000)
    recordings_dir: Path | None = Field(default=None, alias="RECORDINGS_DIR")
    call_token_ttl_s: int = Field(default=300, alias="CALL_TOKEN_TTL_S", ge=10, le=3600)
    call_token_secret: SecretStr | None = Field(default=None, alias="CALL_TOKEN_SECRET")
    admission_hold_s: int = Field(default=30, alias="ADMISSION_HOLD_S", ge=1, le=600)
    endpoint_silence_ms: int = Field(default=600, alias="ENDPOINT_SILENCE_MS", ge=100, le=5000)
    barge_in_min_ms: int = Field(default=120, alias="BARGE_IN_MIN_MS", ge=20, le=2000)
    max_call_seconds: int = Field(default=900, alias="MAX_CALL_SECONDS", ge=30, le=4 * 3600)
    media_timeout_ms: int = Field(default=10_000, alias="MEDIA_TIMEOUT_MS", ge=200, le=120_000)
    transfer_number: str | None = Field(
        default=None, alias="TRANSFER_NUMBER", pattern=r"^\+[1-9]\d{7,14}$"
    )
    twilio_api_base_url: str = Field(
        default="https://api.twilio.com",
        alias="TWILIO_API_BASE_URL",
        pattern=r"^https?://[^/?#\s]+$",
    )
    twilio_rest_timeout_s: float = Field(default=5.0, alias="TWILIO_REST_TIMEOUT_S", ge=0.1, le=60)
    metrics_token: SecretStr | None = Field(default=None, alias="METRICS_TOKEN")
    amd_mode: AmdMode = Field(default=AmdMode.voicemail, alias="AMD_MODE")

    @field_validator("public_host")
    @classmethod
    def _bare_host(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        rest = value.split("://", 1)[1] if "://" in value else value
        if not rest or "/" in rest or "?" in rest or "@" in rest or " " in rest:
            raise ValueError("PUBLIC_HOST is a host name with an optional port, no path")
        if "://" in value and not value.startswith(("http://", "https://")):
            raise ValueError("PUBLIC_HOST may only start with https:// (or http:// in development)")
        return value

    @field_validator("twilio_account_sid")
    @classmethod
    def _sid_shape(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if len(value) != 34 or not value.startswith("AC") or not _is_hex(value[2:]):
            raise ValueError("TWILIO_ACCOUNT_SID looks like AC followed by 32 hex digits")
        return value

    @field_validator("twilio_auth_token")
    @classmethod
    def _blank_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return value

    @property
    def public_is_tls(self) -> bool:
        return self.public_host is not None and not self.public_host.startswith("http://")

    @property
    def public_authority(self) -> str | None:
        """PUBLIC_HOST without its scheme: what goes after https:// and wss://."""
        if self.public_host is None:
            return None
        return self.public_host.split("://", 1)[-1]

    @property
    def public_http_base(self) -> str | None:
        """Where Twilio POSTs webhooks (signatures are computed over this URL)."""
        if self.public_authority is None:
            return None
        return f"{'https' if self.public_is_tls else 'http'}://{self.public_authority}"

    @property
    def public_ws_base(self) -> str | None:
        """Where the TwiML <Stream> points Twilio's media WebSocket."""
        if self.public_authority is None:
            return None
        return f"{'wss' if self.public_is_tls else 'ws'}://{self.public_authority}"

    @property
    def resolved_recordings_dir(self) -> Path:
        return self.recordings_dir or self.data_dir / "recordings"

    def production_problems(self) -> list[str]:
        problems: list[str] = []
        if not self.twilio_validate_signatures:
            problems.append(
                "TWILIO_VALIDATE_SIGNATURES=false lets anyone forge Twilio webhooks; turn it on"
            )
        if self.twilio_auth_token is None:
            problems.append("TWILIO_AUTH_TOKEN is required to check Twilio signatures")
        if self.twilio_account_sid is None:
            problems.append("TWILIO_ACCOUNT_SID is required for outbound calls and hang-ups")
        secret = self.call_token_secret.get_secret_value() if self.call_token_secret else ""
        if len(secret.strip()) < 32:
            problems.append(
                "CALL_TOKEN_SECRET (32+ random characters, the same on every node) is required"
            )
        if self.public_host is None:
            problems.append("PUBLIC_HOST is required: Twilio must reach the webhooks and stream")
        elif not self.public_is_tls:
            problems.append("PUBLIC_HOST must be served over HTTPS/WSS (Twilio needs wss://)")
        if self.stt_provider is STTProvider.fake:
            problems.append("STT_PROVIDER=fake would transcribe a test script, not the caller")
        if self.tts_provider is TTSProvider.fake:
            problems.append("TTS_PROVIDER=fake would play test audio to callers")
        if self.telephony_provider is TelephonyProvider.fake:
            problems.append("TELEPHONY_PROVIDER=fake would never hang up or transfer real calls")
        credentials = self.google_application_credentials
        if credentials is not None and not credentials.is_file():
            problems.append(f"GOOGLE_APPLICATION_CREDENTIALS names a missing file: {credentials}")
        return problems

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> GatewaySettings:
        if self.environment is Environment.production:
            refuse_if_any("gateway", self.production_problems())
        return self


class SettingsError(ValueError):
    """Settings the server cannot start with, from any of the three packages."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        listed = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"voiceagent cannot start with these settings:\n{listed}")


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


@lru_cache
def get_settings() -> GatewaySettings:
    return GatewaySettings()


def check_all(**overrides: Any) -> tuple[CrmSettings, AgentSettings, GatewaySettings]:
    """Load the three packages' settings; on any error raise one listing them all.

    `overrides` go to every constructor (tests pass `_env_file=None`). A server calls this
    at start-up so that a bad deployment fails before it takes a call, not during one.
    """
    loaded: list[Any] = []
    problems: list[str] = []
    for name, cls in (("crm", CrmSettings), ("agent", AgentSettings), ("gateway", GatewaySettings)):
        try:
            loaded.append(cls(**overrides))
        except ValidationError as exc:
            problems.extend(_problems_of(name, exc))
    if problems:
        raise SettingsError(problems)
    crm_settings, agent_settings, gateway_settings = loaded
    return crm_settings, agent_settings, gateway_settings


def _problems_of(name: str, exc: ValidationError) -> list[str]:
    found: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, UnsafeSettingsError):
            found.extend(f"{name}: {problem}" for problem in cause.problems)
            continue
        field = ".".join(str(part) for part in error["loc"]) or "settings"
        found.append(f"{name}: {field}: {error['msg'].removeprefix('Value error, ')}")
    return found
