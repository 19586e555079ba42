"""Where an action comes from: request id, source address, user agent, auth method, worker host.

A middleware binds it for each HTTP request; Celery's task_prerun binds it for each task;
audit_append reads it. contextvars keep concurrent requests (ASGI) apart.
"""
from __future__ import annotations

import contextvars
import socket
import uuid
from dataclasses import dataclass, fields

HOST = socket.gethostname()


@dataclass(frozen=True)
class Where:
    request_id: str = ""
    source_ip: str = ""
    user_agent: str = ""
    auth_method: str = ""
    host: str = HOST
    task_id: str = ""

    def as_dict(self) -> dict:
        # Every field is a str: no need for dataclasses.asdict's deep copy (on every audit append).
        return {k: v for k in _FIELDS if (v := getattr(self, k))}


_FIELDS = tuple(f.name for f in fields(Where))
_current: contextvars.ContextVar[Where] = contextvars.ContextVar("audit_where", default=Where())


def current() -> Where:
    return _current.get()


def bind(where: Where) -> contextvars.Token:
    return _current.set(where)


def reset(token: contextvars.Token) -> None:
    _current.reset(token)


def _auth_method(request) -> str:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header:
        return header.split(" ", 1)[0].lower()  # token, bearer
    if request.COOKIES.get("sessionid"):
        return "session"
    return "anonymous"


class AuditContextMiddleware:
    """Binds the request's audit context. The request id is ours, never the client's (a client
    may send X-Request-ID; it is kept as `client_request_id` in the entries' data, not trusted)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        where = Where(
            request_id=uuid.uuid4().hex,
            source_ip=request.META.get("REMOTE_ADDR", ""),
            user_agent=request.META.get("HTTP_USER_AGENT", "")[:300],
            auth_method=_auth_method(request),
        )
        token = bind(where)
        try:
            response = self.get_response(request)
            response["X-Request-ID"] = where.request_id
            return response
        finally:
            reset(token)
