"""The seam between a conversation channel (a call, a chat) and the brain behind it.

The voice gateway streams the caller's finished turn in and reads the reply out as it
is generated: text deltas (spoken as soon as a sentence is complete) and actions
(hang up, transfer, stop calling). The ReAct agent (its own issue) and the small
scripted agent used until then both implement `Agent`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class ActionKind(StrEnum):
    hang_up = "hang_up"
    transfer = "transfer"
    do_not_call = "do_not_call"


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    #: e.g. the number to transfer to, the reason for do-not-call.
    argument: str | None = None


AgentOutput = TextDelta | Action


@dataclass
class Turn:
    role: str  # "caller" or "agent"
    text: str
    interrupted: bool = False


@dataclass
class Conversation:
    """What the agent knows of this conversation; the channel appends turns."""

    conversation_id: str
    broker_id: int
    lead_id: int | None
    language: str
    channel: str = "call"
    #: "inbound" when the lead reached us, "outbound" when we called them: an outbound
    #: call must say why it calls and how to stop the calls before anything else.
    direction: str = "inbound"
    #: A key the lead can press to opt out, to offer in the greeting (None: none).
    opt_out_key: str | None = None
    turns: list[Turn] = field(default_factory=list)


class Agent(Protocol):
    async def greeting(self, conversation: Conversation) -> str:
        """The first thing said on the call (identifies the business, as the law asks)."""
        ...

    def respond(self, conversation: Conversation, text: str) -> AsyncIterator[AgentOutput]:
        """The reply to the caller's finished turn `text`, streamed. Cancellable at any await."""
        ...
