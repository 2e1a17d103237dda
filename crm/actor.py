"""Who is acting: carried from the request (or task, or agent) down to the audit row."""

from __future__ import annotations

from dataclasses import dataclass

from crm.audit.models import ActorType


@dataclass(frozen=True, slots=True)
class Actor:
    type: ActorType
    id: str | None = None
    ip: str | None = None
    request_id: str | None = None

    @classmethod
    def system(cls, name: str = "system") -> Actor:
        return cls(ActorType.system, name)

    @classmethod
    def cli(cls, name: str = "voiceagent") -> Actor:
        return cls(ActorType.cli, name)

    @classmethod
    def task(cls, name: str) -> Actor:
        return cls(ActorType.task, name)

    @classmethod
    def agent(cls, call_or_conversation: str) -> Actor:
        return cls(ActorType.agent, call_or_conversation)
