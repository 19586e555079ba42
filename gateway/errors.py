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


def exception_handler(exc, context):
    if isinstance(exc, GatehouseError):
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
    return response
