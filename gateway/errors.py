"""Stable error codes and the one DRF exception handler that renders {code, message, detail}."""
from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions as drf
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class ErrorCode:
    # generic
    NOT_AUTHENTICATED = "not_authenticated"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    INVALID = "invalid"
    PARSE_ERROR = "parse_error"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    THROTTLED = "throttled"
    NO_TENANT = "no_tenant"
    # classification and clearances
    LABEL_INVALID = "label_invalid"
    LABEL_ABOVE_CLEARANCE = "label_above_clearance"
    CLEARANCE_INVALID = "clearance_invalid"
    CLEARANCE_SELF = "clearance_self"
    # workflows and runs
    SPEC_INVALID = "spec_invalid"
    UNKNOWN_BACKEND = "unknown_backend"
    RUN_FINISHED = "run_finished"
    # gates
    GATE_NOT_OPEN = "gate_not_open"
    GATE_ALREADY_DECIDED = "gate_already_decided"
    GATE_ALREADY_VOTED = "gate_already_voted"
    GATE_UNKNOWN_OPTION = "gate_unknown_option"
    GATE_INPUT_INVALID = "gate_input_invalid"
    GATE_NOT_APPROVER = "gate_not_approver"
    ASSIGNEE_NOT_CLEARED = "assignee_not_cleared"
    # artefacts
    ARTEFACT_UNAVAILABLE = "artefact_unavailable"


class GatehouseError(Exception):
    """A refusal with a stable code; the API renders it with `status`."""

    status = 400

    def __init__(self, code: str, message: str, *, detail=None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail
        if status is not None:
            self.status = status


class Conflict(GatehouseError):
    status = 409


class Forbidden(GatehouseError):
    status = 403


class NotFound(GatehouseError):
    status = 404

    def __init__(self, message: str = "Not found."):
        super().__init__(ErrorCode.NOT_FOUND, message)


_DRF_CODES = {
    drf.NotAuthenticated: ErrorCode.NOT_AUTHENTICATED,
    drf.AuthenticationFailed: ErrorCode.NOT_AUTHENTICATED,
    drf.PermissionDenied: ErrorCode.PERMISSION_DENIED,
    drf.NotFound: ErrorCode.NOT_FOUND,
    drf.ValidationError: ErrorCode.INVALID,
    drf.ParseError: ErrorCode.PARSE_ERROR,
    drf.MethodNotAllowed: ErrorCode.METHOD_NOT_ALLOWED,
    drf.UnsupportedMediaType: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    drf.Throttled: ErrorCode.THROTTLED,
}


def _record(request, status: int, code: str, message: str) -> None:
    """Every denial (401, 403, 404) and every refused write is recorded, durably: DRF views run
    outside a transaction, so the entry commits even though the request changed nothing."""
    from audit.services import audit_append

    if status in (401, 403, 404):
        event, outcome = "access.denied", "denied"
    elif request.method not in ("GET", "HEAD", "OPTIONS") and 400 <= status < 500:
        event, outcome = "request.refused", "error"
    else:
        return
    user = getattr(request, "user", None)
    membership = getattr(user, "membership", None) if user is not None and user.is_authenticated else None
    audit_append(
        event=event, actor=user, tenant_id=membership.tenant_id if membership else None, outcome=outcome,
        error_code=code, data={"method": request.method, "path": request.path[:500], "status": status,
                               "message": message[:300]},
    )


def exception_handler(exc, context):
    request = context.get("request")
    if isinstance(exc, GatehouseError):
        if request is not None:
            _record(request, exc.status, exc.code, exc.message)
        return Response({"code": exc.code, "message": exc.message, "detail": exc.detail}, status=exc.status)
    if isinstance(exc, Http404):
        exc = drf.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = next((c for klass, c in _DRF_CODES.items() if isinstance(exc, klass)), "error")
    if isinstance(exc, drf.ValidationError):
        message, detail = "The request is not valid.", response.data
    else:
        message, detail = str(getattr(exc, "detail", exc)), None
    response.data = {"code": code, "message": message, "detail": detail}
    if request is not None:
        _record(request, response.status_code, code, message)
    return response
