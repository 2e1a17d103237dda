"""A local stand-in for Twilio's REST API, Calls resource only, on 127.0.0.1.

It answers what the official SDK sends the way Twilio does: form-encoded POSTs under
/2010-04-01/Accounts/{AccountSid}/Calls, HTTP Basic auth (401 and error 20003 when it is
wrong), Twilio's JSON error bodies ({"code": 20404, ...}) and Call resources as JSON.
So the provider is tested through the real SDK's request building and error parsing,
not through a mock of it.

Tests read what arrived (`requests`, every form field), set the state of calls Twilio
would know about (`add_call`), and inject faults one request at a time: an error
answer, a delay before answering (to hit timeouts), or a connection dropped without an
answer. It runs `http.server` in a background thread, so it serves whichever event loop
the test uses.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

API_VERSION = "2010-04-01"
MAX_TWIML_CHARS = 4000
ENDED = frozenset({"completed", "canceled", "busy", "failed", "no-answer"})

_CALLS = re.compile(rf"^/{API_VERSION}/Accounts/(?P<account>[^/]+)/Calls\.json$")
_CALL = re.compile(rf"^/{API_VERSION}/Accounts/(?P<account>[^/]+)/Calls/(?P<sid>[^/]+)\.json$")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as it arrived (recorded before any injected delay or drop)."""

    method: str
    path: str
    form: dict[str, list[str]]
    username: str | None
    headers: dict[str, str]

    def field(self, name: str) -> str | None:
        """The single value of form field `name`, None when absent."""
        values = self.form.get(name)
        if not values:
            return None
        assert len(values) == 1, f"{name} was sent {len(values)} times"
        return values[0]


@dataclass
class StandInCall:
    sid: str
    status: str
    to: str
    from_: str
    direction: str
    twiml: str | None = None
    url: str | None = None
    params: dict[str, list[str]] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do to the next request instead of (or before) answering it normally."""

    kind: Literal["error", "delay", "drop", "garbage"]
    status: int = 500
    code: int | None = None
    message: str = "Internal Server Error"
    delay_s: float = 0.0


class TwilioRestStandIn:
    """Start with `with TwilioRestStandIn(sid, token) as twilio:`; point the SDK at
    `twilio.base_url`."""

    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.calls: dict[str, StandInCall] = {}
        self._requests: list[RecordedRequest] = []
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> TwilioRestStandIn:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.standin = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> TwilioRestStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start the stand-in first"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ test controls

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def add_call(self, *, status: str = "in-progress", sid: str | None = None) -> str:
        """A call Twilio knows about (an inbound call in progress, by default)."""
        sid = sid or new_call_sid()
        with self._lock:
            self.calls[sid] = StandInCall(
                sid=sid, status=status, to="+14155550100", from_="+14155550199", direction="inbound"
            )
        return sid

    def set_status(self, sid: str, status: str) -> None:
        with self._lock:
            self.calls[sid].status = status

    def fail_next(
        self, status: int, *, code: int | None = None, message: str = "Error", times: int = 1
    ) -> None:
        self._push(Fault("error", status=status, code=code, message=message), times)

    def delay_next(self, seconds: float, *, times: int = 1) -> None:
        """Answer the next request(s) normally, but only after `seconds`."""
        self._push(Fault("delay", delay_s=seconds), times)

    def drop_next(self, *, times: int = 1) -> None:
        """Close the connection without answering (the request is not acted on)."""
        self._push(Fault("drop"), times)

    def garble_next(self, *, times: int = 1) -> None:
        """Answer 200 with an HTML page, as a misbehaving proxy in between would."""
        self._push(Fault("garbage"), times)

    def _push(self, fault: Fault, times: int) -> None:
        with self._lock:
            self._faults.extend([fault] * times)

    # ------------------------------------------------------------ serving

    def handle(self, handler: _Handler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length).decode() if length else ""
        form = parse_qs(body, keep_blank_values=True)
        username, password = _basic_auth(handler.headers.get("Authorization"))
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
            self._requests.append(
                RecordedRequest(
                    method=handler.command,
                    path=parts.path,
                    form=form,
                    username=username,
                    headers={k.lower(): v for k, v in handler.headers.items()},
                )
            )
        if fault is not None and fault.kind == "drop":
            handler.close_connection = True
            return
        if fault is not None and fault.kind == "delay":
            self._stopping.wait(fault.delay_s)
        if fault is not None and fault.kind == "garbage":
            _send(handler, 200, b"<html><body>Bad gateway</body></html>", "text/html")
            return
        if fault is not None and fault.kind == "error":
            status, payload = _error(fault.status, fault.code or fault.status, fault.message)
        elif username != self.account_sid or password != self.auth_token:
            status, payload = _error(401, 20003, "Authenticate")
            payload["detail"] = "Your AccountSid or AuthToken was incorrect."
        else:
            status, payload = self._route(handler.command, parts.path, form)
        _send_json(handler, status, payload)

    def _route(
        self, method: str, path: str, form: dict[str, list[str]]
    ) -> tuple[int, dict[str, Any]]:
        if match := _CALLS.match(path):
            if match["account"] != self.account_sid:
                return _not_found(path)
            if method == "POST":
                return self._create(form)
            return _error(405, 20004, "Method not allowed")
        if match := _CALL.match(path):
            if match["account"] != self.account_sid:
                return _not_found(path)
            with self._lock:
                call = self.calls.get(match["sid"])
            if call is None:
                return _not_found(path)
            if method == "GET":
                return 200, self._call_json(call)
            if method == "POST":
                return self._update(call, form)
            return _error(405, 20004, "Method not allowed")
        return _not_found(path)

    def _create(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        to, from_ = _one(form, "To"), _one(form, "From")
        twiml, url = _one(form, "Twiml"), _one(form, "Url")
        if not to:
            return _error(400, 21201, "No 'To' number is specified")
        if not from_:
            return _error(400, 21213, "No 'From' number is specified")
        if not twiml and not url and not _one(form, "ApplicationSid"):
            return _error(400, 21205, "Url parameter is required")
        if twiml and len(twiml) > MAX_TWIML_CHARS:
            return _error(400, 32018, "Twiml is too long")
        call = StandInCall(
            sid=new_call_sid(),
            status="queued",
            to=to,
            from_=from_,
            direction="outbound-api",
            twiml=twiml,
            url=url,
            params=form,
        )
        with self._lock:
            self.calls[call.sid] = call
        return 201, self._call_json(call)

    def _update(self, call: StandInCall, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        status, twiml, url = _one(form, "Status"), _one(form, "Twiml"), _one(form, "Url")
        if twiml and url:
            return _error(400, 20001, "Twiml and Url are mutually exclusive")
        if twiml and len(twiml) > MAX_TWIML_CHARS:
            return _error(400, 32018, "Twiml is too long")
        if status is not None and status not in ("completed", "canceled"):
            return _error(400, 20001, f"Invalid Status: {status}")
        with self._lock:
            if status == "completed" and call.status not in ENDED:
                call.status = "completed"
            elif status == "canceled" and call.status in ("queued", "ringing"):
                call.status = "canceled"
            elif status is None and (twiml or url):
                if call.status != "in-progress":
                    return _error(
                        400, _NOT_IN_PROGRESS, "Call is not in-progress. Cannot redirect."
                    )
                call.twiml, call.url = twiml, url
            call.updated_at = datetime.now(UTC)
        return 200, self._call_json(call)

    def _call_json(self, call: StandInCall) -> dict[str, Any]:
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{call.sid}.json"
        return {
            "sid": call.sid,
            "account_sid": self.account_sid,
            "parent_call_sid": None,
            "to": call.to,
            "to_formatted": call.to,
            "from": call.from_,
            "from_formatted": call.from_,
            "phone_number_sid": "PN" + uuid.uuid5(uuid.NAMESPACE_URL, call.from_).hex,
            "status": call.status,
            "direction": call.direction,
            "answered_by": None,
            "api_version": API_VERSION,
            "caller_name": None,
            "forwarded_from": None,
            "group_sid": None,
            "trunk_sid": None,
            "queue_time": "0",
            "start_time": None,
            "end_time": format_datetime(call.updated_at) if call.status in ENDED else None,
            "duration": None,
            "price": None,
            "price_unit": "USD",
            "date_created": format_datetime(call.created_at),
            "date_updated": format_datetime(call.updated_at),
            "uri": uri,
            "subresource_uris": {
                "notifications": uri.replace(".json", "/Notifications.json"),
                "recordings": uri.replace(".json", "/Recordings.json"),
            },
        }


_NOT_IN_PROGRESS = 21220


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    #: The default backlog of 5 drops SYNs under a burst of concurrent requests, which
    #: costs the client a one-second retransmit: nothing Twilio would do.
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's pooled session expects
    #: Headers and body go out in two writes; with Nagle on, the body waits for the
    #: client's delayed ACK (~40 ms per request on loopback).
    disable_nagle_algorithm = True
    server_version = "TwilioStandIn/1.0"

    def do_POST(self) -> None:
        self.server.standin.handle(self)  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self.server.standin.handle(self)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read `requests` instead."""


def new_call_sid() -> str:
    return "CA" + uuid.uuid4().hex


def _one(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[-1] if values else None


def _basic_auth(header: str | None) -> tuple[str | None, str | None]:
    if not header or not header.startswith("Basic "):
        return None, None
    try:
        decoded = base64.b64decode(header[6:], validate=True).decode()
    except ValueError:
        return None, None
    user, _, password = decoded.partition(":")
    return user, password


def _error(status: int, code: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _not_found(path: str) -> tuple[int, dict[str, Any]]:
    return _error(404, 20404, f"The requested resource {path} was not found")


def _send_json(handler: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
    _send(handler, status, json.dumps(payload).encode(), "application/json; charset=utf-8")


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        if status == 401:
            handler.send_header("WWW-Authenticate", 'Basic realm="Twilio API"')
        handler.end_headers()
        handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client gave up waiting (a timeout test); Twilio would have acted anyway
