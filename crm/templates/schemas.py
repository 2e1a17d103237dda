from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from crm.enums import Channel, Language

NAME_MAX = 100
SUBJECT_MAX = 300
BODY_MAX = 20_000
PROVIDER_ID_MAX = 200

_BODY_DOC = (
    "Jinja text using only the catalogued variables (GET /templates/variables). "
    "Email bodies are HTML and values in them are escaped; other channels are plain text."
)


class TemplateCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    name: str = Field(min_length=1, max_length=NAME_MAX)
    channel: Channel
    language: Language
    subject: str | None = Field(default=None, max_length=SUBJECT_MAX, description="Email only.")
    body: str = Field(min_length=1, max_length=BODY_MAX, description=_BODY_DOC)
    provider_template_id: str | None = Field(
        default=None,
        max_length=PROVIDER_ID_MAX,
        description="The WhatsApp-approved template to use outside the 24-hour window.",
    )


class TemplateUpdate(BaseModel):
    """Only the fields sent change; `subject` and `provider_template_id` may be null."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    name: str | None = Field(default=None, min_length=1, max_length=NAME_MAX)
    channel: Channel | None = None
    language: Language | None = None
    subject: str | None = Field(default=None, max_length=SUBJECT_MAX)
    body: str | None = Field(default=None, min_length=1, max_length=BODY_MAX)
    provider_template_id: str | None = Field(default=None, max_length=PROVIDER_ID_MAX)

    @model_validator(mode="before")
    @classmethod
    def _required_not_null(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in ("name", "channel", "language", "body"):
                if name in data and data[name] is None:
                    raise ValueError(f"{name} cannot be null")
        return data


class TemplateOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    channel: Channel
    language: Language
    subject: str | None
    body: str
    provider_template_id: str | None
    variables: list[str] = Field(description="The catalogued variables the template uses.")
    created_at: datetime
    updated_at: datetime


class VariableOut(BaseModel):
    name: str
    description: str


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lead_id: int | None = Field(default=None, description="Fill the variables from this lead.")
    variables: dict[str, str | int | float] = Field(
        default_factory=dict,
        description="Values by catalogued name (e.g. agent.name); they win over the lead's.",
    )


class PreviewOut(BaseModel):
    channel: Channel
    language: Language
    subject: str | None
    body: str
    length: int = Field(description="Characters in the rendered body.")
