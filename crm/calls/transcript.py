"""A call's turns as the plain-text transcript a person reads or pastes into an email."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

SPEAKERS = {"agent": "Agent", "caller": "Caller", "system": "System"}
INTERRUPTED_MARK = " [interrupted]"


@dataclass(frozen=True, slots=True)
class Line:
    role: str
    text: str
    interrupted: bool = False


def speaker(role: str) -> str:
    return SPEAKERS.get(role, role.capitalize())


def as_text(lines: Iterable[Line]) -> str:
    """One `Speaker: text` line per turn; a cut-off agent turn says so, so the reader
    knows the caller did not hear the rest."""
    out = []
    for line in lines:
        text = " ".join(line.text.split())
        mark = INTERRUPTED_MARK if line.interrupted and line.role == "agent" else ""
        out.append(f"{speaker(line.role)}: {text}{mark}")
    return "\n".join(out) + ("\n" if out else "")
