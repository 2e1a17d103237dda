"""One error shape for the whole API: RFC 9457 problem details.

Services raise `Problem` subclasses; the handlers installed by `install_handlers` turn
them, validation failures and stray HTTP errors into `application/problem+json`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_TYPE_BASE = "https://voiceagent.dev/problems/"


class Problem(Exception):
    """An error the client caused or must know about, with its HTTP status."""

    status = 400
    title = "Bad request"
    kind = "bad-request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.extra = extra

    def to_dict(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": _TYPE_BASE + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


class NotFound(Problem):
    status, title, kind = 404, "Not found", "not-found"


class Conflict(Problem):
    status, title, kind = 409, "Conflict", "conflict"


class InvalidInput(Problem):
    status, title, kind = 422, "Invalid input", "invalid-input"


class Unauthorized(Problem):
    status, title, kind = 401, "Unauthorized", "unauthorized"


class PayloadTooLarge(Problem):
    status, title, kind = 413, "Payload too large", "payload-too-large"


def field_error(field: str, message: str, kind: str = "value_error") -> dict[str, Any]:
    return {"field": field, "message": message, "type": kind}


def problem_response(problem: Problem, request: Request) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if problem.status == 401 else None
    return JSONResponse(
        problem.to_dict(instance=request.url.path),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _loc_to_field(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or ".".join(str(p) for p in loc)


def install_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(exc, request)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            field_error(_loc_to_field(tuple(e.get("loc", ()))), e.get("msg", ""), e.get("type", ""))
            for e in exc.errors()
        ]
        problem = InvalidInput("The request did not pass validation.", errors=errors)
        return problem_response(problem, request)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        problem = Problem(str(exc.detail))
        problem.status = exc.status_code
        problem.title = _reason(exc.status_code)
        problem.kind = problem.title.lower().replace(" ", "-")
        response = problem_response(problem, request)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        problem = Problem("An unexpected error occurred; it has been logged.")
        problem.status, problem.title, problem.kind = 500, "Internal server error", "internal"
        return problem_response(problem, request)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
