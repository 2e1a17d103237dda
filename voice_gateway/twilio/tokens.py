"""Short-lived per-call tokens: proof that a media stream belongs to a call we answered.

The voice webhook puts a token in the TwiML `<Parameter>`s; Twilio hands it back in the
stream's `start`. A signed WebSocket upgrade proves the request came from Twilio; the
token proves *which* call it is for and that it was issued moments ago, so a replayed
or guessed `start` cannot attach to another call (the "per-call token" layer on top of
the signature, as in Twilio's own examples).

A token is `v1.<call id>.<expiry, unix seconds>.<HMAC-SHA256, base64url>`, keyed by
CALL_TOKEN_SECRET and checked in constant time. No state is kept, so any gateway node
can check a token another node issued, as long as they share the secret. Without a
secret (development only; production refuses to start) each process draws a random
one, so tokens do not survive a restart or cross processes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Final

from voice_gateway.config import GatewaySettings, get_settings

log = logging.getLogger(__name__)

VERSION: Final = "v1"
#: Domain separation: this key signs nothing else with the same layout.
_CONTEXT: Final = b"voiceagent/call-token/v1\x00"
#: Longer than any token we issue (call ids and expiries are at most 19 digits each).
MAX_TOKEN_CHARS: Final = 120
_SIGNATURE_CHARS: Final = 43  # 32 bytes of HMAC-SHA256 in unpadded base64url


class TokenProblem(StrEnum):
    malformed = "malformed"
    bad_signature = "bad_signature"
    wrong_call = "wrong_call"
    expired = "expired"


class TokenError(Exception):
    """A token that does not admit the stream; `problem` says why (never the token)."""

    def __init__(self, problem: TokenProblem, reason: str) -> None:
        super().__init__(reason)
        self.problem = problem
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CallClaim:
    """What a valid token proves: this call, until this time."""

    call_id: int
    expires_at: int


def _digits(text: str) -> int | None:
    if 0 < len(text) <= 19 and text.isascii() and text.isdigit():
        return int(text)
    return None


@dataclass(frozen=True, slots=True, repr=False)
class CallTokens:
    """Issues and checks tokens; `clock` returns unix seconds (injected in tests)."""

    secret: bytes
    ttl_s: int
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("a call-token secret cannot be empty")
        if self.ttl_s <= 0:
            raise ValueError("a call token must live a positive number of seconds")

    def __repr__(self) -> str:
        return f"CallTokens(ttl_s={self.ttl_s})"

    def _sign(self, call_id: int, expires_at: int) -> str:
        message = _CONTEXT + f"{call_id}.{expires_at}".encode()
        digest = hmac.new(self.secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def issue(self, call_id: int) -> str:
        """A token for `call_id`, valid for `ttl_s` seconds from now."""
        if call_id < 0:
            raise ValueError("call ids are non-negative")
        expires_at = int(self.clock()) + self.ttl_s
        return f"{VERSION}.{call_id}.{expires_at}.{self._sign(call_id, expires_at)}"

    def verify(self, token: str | None, *, call_id: int | str | None = None) -> CallClaim:
        """The claim `token` proves, or `TokenError`.

        With `call_id` (the `<Parameter>` that came with the token) the token must be for
        that call. The signature is checked before anything the token says is believed.
        """
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise TokenError(TokenProblem.malformed, "token is missing or too long")
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != VERSION or len(parts[3]) != _SIGNATURE_CHARS:
            raise TokenError(TokenProblem.malformed, "token is not a v1 call token")
        claimed, expires_at = _digits(parts[1]), _digits(parts[2])
        if claimed is None or expires_at is None:
            raise TokenError(TokenProblem.malformed, "token call id or expiry is not a number")
        if not hmac.compare_digest(
            self._sign(claimed, expires_at).encode("ascii"), parts[3].encode("ascii", "replace")
        ):
            raise TokenError(TokenProblem.bad_signature, "token signature does not match")
        if call_id is not None:
            expected = _digits(call_id) if isinstance(call_id, str) else call_id
            if expected != claimed:
                raise TokenError(
                    TokenProblem.wrong_call, f"token is for call {claimed}, not {call_id!r:.40}"
                )
        now = self.clock()
        if now >= expires_at:
            raise TokenError(TokenProblem.expired, f"token expired {int(now) - expires_at} s ago")
        return CallClaim(call_id=claimed, expires_at=expires_at)


#: This process's key when CALL_TOKEN_SECRET is unset (development only).
_PROCESS_SECRET: Final = secrets.token_bytes(32)


def secret_of(settings: GatewaySettings) -> bytes:
    configured = settings.call_token_secret
    if configured is not None and configured.get_secret_value().strip():
        return configured.get_secret_value().encode("utf-8")
    log.warning(
        "CALL_TOKEN_SECRET is unset: using a random per-process key; "
        "tokens will not survive a restart or work across processes"
    )
    return _PROCESS_SECRET


def from_settings(settings: GatewaySettings) -> CallTokens:
    return CallTokens(secret=secret_of(settings), ttl_s=settings.call_token_ttl_s)


@lru_cache
def get_call_tokens() -> CallTokens:
    """The process's token issuer/checker, from the gateway settings."""
    return from_settings(get_settings())
