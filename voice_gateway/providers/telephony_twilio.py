"""Call control through Twilio's REST API: hang up, transfer to a person, place a call.

The media stream cannot end a call or move it (Twilio: "the only way to stop a Stream is
to end the call"), so these go through the Calls resource with the official SDK's async
client, which never blocks the event loop. The SDK builds every request; only its base
URL is ours to choose (`TWILIO_API_BASE_URL`), which is how a region is picked and how
tests point it at a stand-in on loopback.

Retries follow what the request does if it runs twice. A hang-up is safe to repeat, so
timeouts, dropped connections and 5xx answers are retried within a time budget. A
transfer or a new call is not (a second `<Dial>` rings the human again, a second create
calls the lead twice), so those are retried only when Twilio certainly did not act:
the connection never opened, or a 429. Every failure ends as one `TelephonyError` whose
`failure` says what happened, so the session can pick a fallback without parsing text.
The auth token is kept out of reprs, logs and error messages.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from crm.config import Environment
from crm.phones import InvalidPhoneNumber, normalize
from voice_gateway.config import GatewaySettings
from voice_gateway.providers.base import ProviderError

log = logging.getLogger(__name__)

T = TypeVar("T")

PROVIDER = "twilio"
DEFAULT_BASE_URL = "https://api.twilio.com"
#: Twilio refuses inline TwiML longer than this (error 32018).
MAX_TWIML_CHARS = 4000
#: Twilio's `<Dial timeout>` and `timeout` on create accept at most this many seconds.
MAX_RING_SECONDS = 600

_CALL_SID = re.compile(r"^CA[0-9a-fA-F]{32}$")
#: Twilio error codes that mean "this call is no longer there to act on".
_NOT_FOUND = 20404
_NOT_IN_PROGRESS = 21220
_TOO_MANY_REQUESTS = 20429
#: Twilio <Say> wants a full locale; the gateway speaks in two-letter languages.
_SAY_LOCALES = {"es": "es-US", "en": "en-US"}
#: Settings come from GatewaySettings only: the SDK would otherwise read TWILIO_EDGE and
#: TWILIO_REGION from the process environment and rewrite the host of every request.
_NO_AMBIENT_ENV = {"TWILIO_EDGE": "", "TWILIO_REGION": ""}


class TelephonyFailure(StrEnum):
    invalid_request = "invalid_request"  # our input: bad number, sid or TwiML; nothing sent
    not_found = "not_found"  # no such call on this account
    call_ended = "call_ended"  # the call exists but is no longer in progress
    auth = "auth"  # wrong account SID or auth token
    rejected = "rejected"  # Twilio refused the request (other 4xx)
    rate_limited = "rate_limited"  # 429 after every retry
    unavailable = "unavailable"  # 5xx or connection failures after every retry
    timeout = "timeout"  # no answer within the request timeout or the overall budget


class TelephonyError(ProviderError):
    """A telephony request failed; `failure` is the machine-readable reason."""

    def __init__(
        self,
        failure: TelephonyFailure,
        detail: str,
        *,
        status: int | None = None,
        code: int | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(PROVIDER, f"{failure.value}: {detail}")
        self.failure = failure
        self.detail = detail
        self.status = status
        self.code = code
        self.attempts = attempts


class MachineDetection(StrEnum):
    """Twilio's answering-machine detection modes."""

    #: Report human/machine as soon as it is known (AnsweredBy=machine_start).
    enable = "Enable"
    #: Wait for the greeting to end, to leave a message after the beep.
    detect_message_end = "DetectMessageEnd"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long and how often to try one REST request."""

    #: One HTTP exchange, connect to last byte.
    request_timeout_s: float = 5.0
    max_attempts: int = 3
    #: Everything, retries and back-off included: the caller is waiting on the line.
    budget_s: float = 12.0
    #: First back-off; doubles per attempt, with jitter between half and all of it.
    backoff_s: float = 0.25

    def __post_init__(self) -> None:
        if self.request_timeout_s <= 0 or self.budget_s <= 0 or self.backoff_s < 0:
            raise ValueError("retry timeouts must be positive and back-off not negative")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")


# ---------------------------------------------------------------- pure helpers


def check_e164(number: str) -> str:
    """`number` in E.164 if it is a valid international number; else `TelephonyError`.

    Only international form is accepted (a leading +): a number without a country code
    would be dialled in whatever country Twilio guesses.
    """
    text = (number or "").strip()
    if not text.startswith("+"):
        raise TelephonyError(
            TelephonyFailure.invalid_request, f"{text!r} is not an E.164 number (needs +country)"
        )
    try:
        return normalize(text)
    except InvalidPhoneNumber as exc:
        raise TelephonyError(TelephonyFailure.invalid_request, str(exc)) from exc


def check_call_sid(call_sid: str) -> str:
    """The sid goes into the request path, so anything but CA + 32 hex is refused."""
    if not isinstance(call_sid, str) or not _CALL_SID.match(call_sid):
        raise TelephonyError(
            TelephonyFailure.invalid_request, f"{call_sid!r} is not a Twilio call SID"
        )
    return call_sid


def check_twiml(twiml: str) -> str:
    if not twiml.strip():
        raise TelephonyError(TelephonyFailure.invalid_request, "TwiML is empty")
    if len(twiml) > MAX_TWIML_CHARS:
        raise TelephonyError(
            TelephonyFailure.invalid_request,
            f"TwiML is {len(twiml)} characters; Twilio takes at most {MAX_TWIML_CHARS} inline",
        )
    return twiml


def say_locale(language: str | None) -> str | None:
    """A `<Say language>` for the gateway's "es"/"en", or a full locale passed through."""
    if language is None:
        return None
    return _SAY_LOCALES.get(language.lower(), language)


def transfer_twiml(
    to_number: str,
    *,
    announce: str | None = None,
    language: str | None = None,
    voice: str | None = None,
    caller_id: str | None = None,
    ring_timeout_s: int = 30,
    action_url: str | None = None,
) -> str:
    """`<Response><Say>announce</Say><Dial callerId>number</Dial></Response>`, checked.

    Built with the SDK's TwiML builder so announcement text is XML-escaped. Without
    `caller_id` Twilio shows the caller's own number to the person answering.
    """
    number = check_e164(to_number)
    caller = check_e164(caller_id) if caller_id is not None else None
    _check_ring_timeout(ring_timeout_s)
    if action_url is not None:
        check_url(action_url, "action_url")
    response = VoiceResponse()
    if announce is not None and announce.strip():
        say_attrs = {"language": say_locale(language), "voice": voice}
        response.say(announce.strip(), **{k: v for k, v in say_attrs.items() if v})
    dial_attrs: dict[str, Any] = {"timeout": ring_timeout_s}
    if caller is not None:
        dial_attrs["caller_id"] = caller
    if action_url is not None:
        dial_attrs["action"] = action_url
        dial_attrs["method"] = "POST"
    response.dial(number, **dial_attrs)
    return check_twiml(str(response.to_xml(xml_declaration=False)))


def classify(status: int | None, code: int | None) -> TelephonyFailure:
    """What a Twilio error answer means for us, from its HTTP status and error code."""
    if status == 404 or code == _NOT_FOUND:
        return TelephonyFailure.not_found
    if code == _NOT_IN_PROGRESS:
        return TelephonyFailure.call_ended
    if status in (401, 403):
        return TelephonyFailure.auth
    if status == 429 or code == _TOO_MANY_REQUESTS:
        return TelephonyFailure.rate_limited
    if status is not None and status >= 500:
        return TelephonyFailure.unavailable
    return TelephonyFailure.rejected


def _retryable(failure: TelephonyFailure, *, idempotent: bool, sent: bool) -> bool:
    """Retry when a repeat cannot do harm: always for idempotent requests, else only
    when Twilio certainly did not act (no connection, or an explicit 429)."""
    if failure is TelephonyFailure.rate_limited:
        return True
    if failure in (TelephonyFailure.unavailable, TelephonyFailure.timeout):
        return idempotent or not sent
    return False


def check_url(url: str, what: str) -> str:
    """Twilio only calls absolute http(s) URLs back."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in url):
        raise TelephonyError(
            TelephonyFailure.invalid_request, f"{what} must be an absolute http(s) URL: {url!r}"
        )
    return url


def _check_ring_timeout(seconds: int) -> int:
    if not 1 <= seconds <= MAX_RING_SECONDS:
        raise TelephonyError(
            TelephonyFailure.invalid_request,
            f"ring timeout must be 1..{MAX_RING_SECONDS} s, not {seconds}",
        )
    return seconds


_CALLBACK_EVENTS = frozenset({"initiated", "ringing", "answered", "completed"})


@dataclass(frozen=True, slots=True)
class OutboundCall:
    """A call to place, checked on construction (numbers come out in E.164)."""

    to: str
    from_: str
    twiml: str | None = None
    url: str | None = None
    status_callback: str | None = None
    status_callback_events: tuple[str, ...] = ("initiated", "ringing", "answered", "completed")
    machine_detection: MachineDetection | None = None
    #: Set to run detection in the background (AsyncAmd) and be told here.
    amd_status_callback: str | None = None
    ring_timeout_s: int = 30
    time_limit_s: int | None = None
    record: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "to", check_e164(self.to))
        object.__setattr__(self, "from_", check_e164(self.from_))
        if (self.twiml is None) == (self.url is None):
            raise TelephonyError(TelephonyFailure.invalid_request, "give exactly one of twiml, url")
        if self.twiml is not None:
            check_twiml(self.twiml)
        if self.url is not None:
            check_url(self.url, "url")
        if self.status_callback is not None:
            check_url(self.status_callback, "status_callback")
        unknown = set(self.status_callback_events) - _CALLBACK_EVENTS
        if unknown:
            raise TelephonyError(
                TelephonyFailure.invalid_request,
                f"unknown status callback events: {', '.join(sorted(unknown))}",
            )
        if self.amd_status_callback is not None:
            check_url(self.amd_status_callback, "amd_status_callback")
            if self.machine_detection is None:
                raise TelephonyError(
                    TelephonyFailure.invalid_request, "amd_status_callback needs machine_detection"
                )
        _check_ring_timeout(self.ring_timeout_s)
        if self.time_limit_s is not None and not 1 <= self.time_limit_s <= 4 * 3600:
            raise TelephonyError(
                TelephonyFailure.invalid_request, f"time limit out of range: {self.time_limit_s}"
            )

    def sdk_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the SDK's `calls.create_async`."""
        params: dict[str, Any] = {
            "to": self.to,
            "from_": self.from_,
            "timeout": self.ring_timeout_s,
        }
        if self.twiml is not None:
            params["twiml"] = self.twiml
        if self.url is not None:
            params["url"] = self.url
            params["method"] = "POST"
        if self.status_callback is not None:
            params["status_callback"] = self.status_callback
            params["status_callback_method"] = "POST"
            params["status_callback_event"] = list(self.status_callback_events)
        if self.machine_detection is not None:
            params["machine_detection"] = self.machine_detection.value
        if self.amd_status_callback is not None:
            params["async_amd"] = "true"  # a string in Twilio's API, not a boolean
            params["async_amd_status_callback"] = self.amd_status_callback
            params["async_amd_status_callback_method"] = "POST"
        if self.time_limit_s is not None:
            params["time_limit"] = self.time_limit_s
        if self.record:
            params["record"] = True
        return params


# ---------------------------------------------------------------- the provider


class _HttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """The SDK's aiohttp client, with Basic auth sent as a header.

    The SDK hands aiohttp an `auth=BasicAuth(...)`, which aiohttp 3.14 deprecates and 4.0
    removes. The SDK's request log skips Authorization headers, so the token stays out.
    """

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Any:
        headers = dict(headers or {})
        if auth is not None:
            pair = f"{auth[0]}:{auth[1]}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return await super().request(
            method,
            url,
            params=params,
            data=data,
            headers=headers,
            auth=None,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )


class TwilioTelephony:
    """`Telephony` over Twilio REST, one per process (it pools HTTP connections).

    Close it with `aclose()` at shutdown. The HTTP session is made on first use, inside
    the running event loop, because aiohttp binds a session to its loop.
    """

    name = PROVIDER

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        base_url: str = DEFAULT_BASE_URL,
        retry: RetryPolicy | None = None,
        transfer_caller_id: str | None = None,
        say_voice: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not account_sid or not auth_token:
            raise ValueError("Twilio telephony needs an account SID and an auth token")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"Twilio base URL must be scheme://host[:port], not {base_url!r}")
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.transfer_caller_id = (
            check_e164(transfer_caller_id) if transfer_caller_id is not None else None
        )
        self.say_voice = say_voice
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._client: Client | None = None
        self._http: _HttpClient | None = None

    @classmethod
    def from_settings(cls, settings: GatewaySettings, **kwargs: Any) -> TwilioTelephony:
        """The provider the gateway's settings describe; refuses what would leak the token."""
        if settings.twilio_account_sid is None or settings.twilio_auth_token is None:
            raise ValueError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are needed for Twilio REST")
        base_url = settings.twilio_api_base_url
        if settings.environment is Environment.production and not base_url.startswith("https://"):
            raise ValueError("TWILIO_API_BASE_URL must be https:// in production")
        timeout = settings.twilio_rest_timeout_s
        kwargs.setdefault(
            "retry", RetryPolicy(request_timeout_s=timeout, budget_s=max(12.0, 2.5 * timeout))
        )
        return cls(
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            base_url=base_url,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"TwilioTelephony(account_sid={self.account_sid!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------ Telephony

    async def hang_up(self, call_sid: str) -> None:
        """End the call. A call Twilio no longer has in progress counts as hung up."""
        sid = check_call_sid(call_sid)
        try:
            await self._request(
                "hang_up",
                lambda client: client.calls(sid).update_async(status="completed"),
                idempotent=True,
            )
        except TelephonyError as exc:
            if exc.failure in (TelephonyFailure.not_found, TelephonyFailure.call_ended):
                log.info("hang-up of %s: call already ended (%s)", sid, exc.code)
                return
            raise
        log.info("hung up %s", sid)

    async def transfer(
        self,
        call_sid: str,
        to_number: str,
        *,
        announce: str | None = None,
        language: str | None = None,
        caller_id: str | None = None,
        ring_timeout_s: int = 30,
        action_url: str | None = None,
    ) -> None:
        """Replace the call's TwiML with `<Say>` + `<Dial>`: Twilio stops our stream (a
        `stop` arrives, which must not trigger a hang-up) and rings `to_number`."""
        sid = check_call_sid(call_sid)
        twiml = transfer_twiml(
            to_number,
            announce=announce,
            language=language,
            voice=self.say_voice,
            caller_id=caller_id if caller_id is not None else self.transfer_caller_id,
            ring_timeout_s=ring_timeout_s,
            action_url=action_url,
        )
        await self._request(
            "transfer",
            lambda client: client.calls(sid).update_async(twiml=twiml),
            idempotent=False,
        )
        log.info("transferred %s", sid)

    # ------------------------------------------------------------ outbound

    async def place_call(self, request: OutboundCall) -> str:
        """Place the call `request` describes and return its CallSid (status "queued");
        the rest arrives as status callbacks. With `amd_status_callback`, detection runs in
        the background (AsyncAmd) so the agent can start talking at once."""
        params = request.sdk_kwargs()
        call = await self._request(
            "start_outbound_call",
            lambda client: client.calls.create_async(**params),
            idempotent=False,
        )
        sid = getattr(call, "sid", None)
        if not isinstance(sid, str) or not _CALL_SID.match(sid):
            raise TelephonyError(
                TelephonyFailure.rejected, f"Twilio answered without a call SID: {sid!r}"
            )
        log.info("placed outbound call %s", sid)
        return sid

    async def aclose(self) -> None:
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.close()

    # ------------------------------------------------------------ the one request path

    def _ensure_client(self) -> Client:
        if self._client is None:
            self._http = _HttpClient()
            client = Client(
                username=self.account_sid,
                password=self._auth_token,
                account_sid=self.account_sid,
                http_client=self._http,
                environment=_NO_AMBIENT_ENV,
            )
            client.api.base_url = self.base_url
            self._client = client
        return self._client

    async def _request(
        self,
        operation: str,
        send: Callable[[Client], Awaitable[T]],
        *,
        idempotent: bool,
    ) -> T:
        policy = self.retry
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.budget_s
        client = self._ensure_client()
        attempt = 0
        while True:
            attempt += 1
            limit = min(policy.request_timeout_s, deadline - loop.time())
            try:
                async with asyncio.timeout(limit):
                    return await send(client)
            except (
                TwilioRestException,
                TwilioServiceException,
                TimeoutError,
                aiohttp.ClientError,
                ValueError,
            ) as exc:
                error, sent = _as_error(exc, limit, attempt)
            pause = policy.backoff_s * 2 ** (attempt - 1) * self._rng.uniform(0.5, 1.0)
            if (
                attempt >= policy.max_attempts
                or loop.time() + pause >= deadline
                or not _retryable(error.failure, idempotent=idempotent, sent=sent)
            ):
                quiet = error.failure in (TelephonyFailure.not_found, TelephonyFailure.call_ended)
                log.log(
                    logging.INFO if quiet else logging.WARNING,
                    "twilio %s failed after %d attempt(s): %s",
                    operation,
                    attempt,
                    error.reason,
                )
                raise error
            log.info(
                "twilio %s attempt %d failed (%s); retrying in %.2f s",
                operation,
                attempt,
                error.failure.value,
                pause,
            )
            await self._sleep(pause)


def _as_error(exc: Exception, limit: float, attempt: int) -> tuple[TelephonyError, bool]:
    """The `TelephonyError` one failed attempt amounts to, and whether the request may
    have reached Twilio (False only when the connection never opened)."""
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        status, code = _status_code(exc)
        failure = classify(status, code)
        return TelephonyError(
            failure, _message(exc), status=status, code=code, attempts=attempt
        ), True
    if isinstance(exc, TimeoutError):
        detail = f"no answer within {limit:.2f} s"
        return TelephonyError(TelephonyFailure.timeout, detail, attempts=attempt), True
    if isinstance(exc, aiohttp.ClientConnectorError):
        detail = f"cannot connect: {type(exc).__name__}"
        return TelephonyError(TelephonyFailure.unavailable, detail, attempts=attempt), False
    if isinstance(exc, ValueError):
        detail = f"unreadable answer: {type(exc).__name__}"  # not JSON: a proxy's error page
        return TelephonyError(TelephonyFailure.unavailable, detail, attempts=attempt), True
    # The connection dropped mid-request.
    detail = f"connection failed: {type(exc).__name__}"
    return TelephonyError(TelephonyFailure.unavailable, detail, attempts=attempt), True


def _status_code(
    exc: TwilioRestException | TwilioServiceException,
) -> tuple[int | None, int | None]:
    status = getattr(exc, "status", None)
    code = getattr(exc, "code", None)
    return (
        status if isinstance(status, int) else None,
        code if isinstance(code, int) else None,
    )


def _message(exc: TwilioRestException | TwilioServiceException) -> str:
    """Twilio's own words, without the SDK's terminal colours or the request URL."""
    status, code = _status_code(exc)
    if isinstance(exc, TwilioServiceException):
        text = f"{exc.title}: {exc.detail}" if exc.detail else exc.title
    else:
        text = exc.msg or type(exc).__name__
    return f"HTTP {status} error {code}: {text}"
