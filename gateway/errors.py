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
    CSRF_FAILED = "csrf_failed"
    INVALID_TOKEN = "invalid_token"  # a bearer token refused (RFC 6750); WWW-Authenticate says why
    IDENTITY_UNAVAILABLE = "identity_unavailable"  # the identity provider did not answer
    USER_EXISTS = "user_exists"
    ROLE_NOT_ALLOWED = "role_not_allowed"  # a tenant admin cannot grant platform roles
    # classification and clearances
    LABEL_INVALID = "label_invalid"
    LABEL_ABOVE_CLEARANCE = "label_above_clearance"
    LABEL_DOWNGRADE = "label_downgrade"
    CLEARANCE_INVALID = "clearance_invalid"
    CLEARANCE_SELF = "clearance_self"
    # workflows and runs
    SPEC_INVALID = "spec_invalid"
    UNKNOWN_BACKEND = "unknown_backend"
    RUN_FINISHED = "run_finished"
    # backends, placement and credentials
    NO_BACKEND_FOR_LABEL = "no_backend_for_label"  # no backend the tenant has may host a task's label
    BACKENDS_INVALID = "backends_invalid"  # a backend configuration file refused (with lines)
    CREDENTIALS_INVALID = "credentials_invalid"
    CREDENTIALS_UNAVAILABLE = "credentials_unavailable"  # the credential store did not answer: retry later
    # gates
    GATE_NOT_OPEN = "gate_not_open"
    GATE_ALREADY_DECIDED = "gate_already_decided"
    GATE_ALREADY_VOTED = "gate_already_voted"
    GATE_UNKNOWN_OPTION = "gate_unknown_option"
    GATE_INPUT_INVALID = "gate_input_invalid"
    GATE_NOT_APPROVER = "gate_not_approver"
    GATE_SELF_APPROVAL = "gate_self_approval"
    SIGNATURE_REFUSED = "signature_refused"
    GATE_NOT_DECIDED = "gate_not_decided"
    SIGNER_UNAVAILABLE = "signer_unavailable"
    KEY_OPERATION_REFUSED = "key_operation_refused"
    ASSIGNEE_NOT_CLEARED = "assignee_not_cleared"
    # artefacts
    ARTEFACT_UNAVAILABLE = "artefact_unavailable"
    # audit exports
    EXPORT_EXPIRED = "export_expired"  # the bundle was deleted at the end of its retention


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


class InvalidToken(drf.AuthenticationFailed):
    """A bearer token that is not acceptable (signature, issuer, audience, expiry, type, revoked)."""


class NoTenant(drf.PermissionDenied):
    """Authenticated, but the identity names no tenant (or one we do not know)."""

    default_detail = "Your account belongs to no tenant."


class IdentityUnavailable(drf.APIException):
    status_code = 503
    default_detail = "The identity provider did not answer; try again."


_DRF_CODES = {
    InvalidToken: ErrorCode.INVALID_TOKEN,
    NoTenant: ErrorCode.NO_TENANT,
    IdentityUnavailable: ErrorCode.IDENTITY_UNAVAILABLE,
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


def record_refusal(request, status: int, code: str, message: str) -> None:
    """Every denial (401, 403, 404), every refused write and every write that failed (5xx) is recorded,
    durably: DRF views run outside a transaction, so the entry commits even though the request's own
    transaction rolled back."""
    from audit.services import audit_append

    if status in (401, 403, 404):
        event, outcome = "access.denied", "denied"
    elif request.method not in ("GET", "HEAD", "OPTIONS") and 400 <= status < 500:
        event, outcome = "request.refused", "error"
    elif request.method not in ("GET", "HEAD", "OPTIONS") and status >= 500:
        event, outcome = "request.failed", "error"
    else:
        return
    from .selectors import membership_for

    user = getattr(request, "user", None)
    membership = None
    if user is not None and user.is_authenticated:
        try:  # through membership_for: the entry is written in the caller's tenant scope (gateway/dbscope.py)
            membership = membership_for(user)
        except (GatehouseError, drf.APIException):  # no tenant: a platform entry
            membership = None
    audit_append(
        event=event, actor=user, tenant_id=membership.tenant_id if membership else None, outcome=outcome,
        error_code=code, data={"method": request.method, "path": request.path[:500], "status": status,
                               "message": message[:300]},
    )


def exception_handler(exc, context):
    request = context.get("request")
    if isinstance(exc, GatehouseError):
        if request is not None:
            record_refusal(request, exc.status, exc.code, exc.message)
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
        record_refusal(request, response.status_code, code, message)
    return response
