from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class PhoneNumberOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    e164: str
    label: str | None


class PhoneNumberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    number: str = Field(min_length=3, max_length=32)
    label: str | None = Field(default=None, max_length=100)


class BrokerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    legal_name: str
    time_zone: str
    locale: str
    phone_numbers: list[PhoneNumberOut]
    created_at: datetime


class BrokerUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    legal_name: str | None = Field(default=None, min_length=1, max_length=300)
    time_zone: str | None = Field(default=None, max_length=64)
    locale: str | None = Field(default=None, pattern="^(es|en)$")


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="default", min_length=1, max_length=100)


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The API key. It is shown only in this response.")
