"""Auditor endpoints: search the log, export a signed bundle, see the latest checkpoint."""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import threading

from django.http import StreamingHttpResponse
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.canonical import rfc3339
from audit.export import ExportError, audit_export
from audit.selectors import (
    audit_checkpoint_status,
    audit_entries_for_user,
    audit_export_allowed,
    audit_scope_for_user,
    is_platform_auditor,
)
from audit.services import audit_append
from gateway.errors import ErrorCode, Forbidden, GatehouseError
from gateway import dbscope
from gateway.permissions import IsAuditor


def _time(request, name):
    raw = request.query_params.get(name)
    if not raw:
        return None
    value = parse_datetime(raw)
    if value is None or value.tzinfo is None:
        raise GatehouseError(ErrorCode.INVALID, f"{name} must be an ISO 8601 time with a zone, e.g. 2026-01-31T12:00:00Z")
    return value


def _entry(e) -> dict:
    leaf = getattr(e, "leaf", None)
    return {
        "id": e.id, "seq": leaf.seq if leaf else None, "tenant_seq": leaf.tenant_seq if leaf else None,
        "at": rfc3339(e.at), "integrated_at": rfc3339(leaf.integrated_at) if leaf else None,
        "tenant": e.tenant.slug if e.tenant_id else None, **e.body,
    }


class PlatformLogScope:
    """Row-level security (gateway/rls.py) keeps a request's database connection to the caller's
    tenant. A platform auditor reads every tenant's log and the platform entries of none, so for
    them, and on these read-only endpoints only, the scope is widened to every tenant once
    authentication and the permission check have passed, and set back when the response is
    final; the selectors still narrow what is returned. Anyone else stays in their tenant."""

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if is_platform_auditor(request.user):
            self._log_scope = dbscope.system_scope()
            self._log_scope.__enter__()

    def finalize_response(self, request, response, *args, **kwargs):
        scope, self._log_scope = getattr(self, "_log_scope", None), None
        if scope is not None:
            scope.__exit__(None, None, None)
        return super().finalize_response(request, response, *args, **kwargs)


FILTERS = {"event": "event", "outcome": "outcome", "object_type": "object_type", "object_id": "object_id",
           "actor": "actor__username", "label": "label"}


class AuditEntryListApi(PlatformLogScope, APIView):
    permission_classes = [IsAuditor]

    @extend_schema(parameters=[OpenApiParameter(n, str) for n in [*FILTERS, "since", "until", "tenant"]],
                   responses=OpenApiResponse(description="entries, newest first"))
    def get(self, request):
        entries = audit_entries_for_user(request.user, request.query_params.get("tenant"))
        for param, field in FILTERS.items():
            value = request.query_params.get(param)
            if value:
                entries = entries.filter(**{field: value})
        if (since := _time(request, "since")) is not None:
            entries = entries.filter(at__gte=since)
        if (until := _time(request, "until")) is not None:
            entries = entries.filter(at__lt=until)
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(entries.order_by("-id"), request, view=self)
        audit_append(event="audit.searched", actor=request.user, tenant_id=request.user.membership.tenant_id,
                     data={k: v for k, v in request.query_params.items() if k in FILTERS or k in ("since", "until", "tenant")})
        return paginator.get_paginated_response([_entry(e) for e in page])


def _tar_stream(directory: str, cleanup: str):
    """Stream DIR as a gzip'd tar in bounded memory: a thread writes into a pipe we read from."""
    read_fd, write_fd = os.pipe()

    def produce():
        try:
            with os.fdopen(write_fd, "wb") as sink, tarfile.open(fileobj=sink, mode="w|gz") as tar:
                tar.add(directory, arcname="bundle")
        finally:
            shutil.rmtree(cleanup, ignore_errors=True)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    with os.fdopen(read_fd, "rb") as source:
        while chunk := source.read(1 << 16):
            yield chunk
    thread.join()


class AuditExportApi(PlatformLogScope, APIView):
    permission_classes = [IsAuditor]

    @extend_schema(parameters=[OpenApiParameter("since", str), OpenApiParameter("until", str), OpenApiParameter("tenant", str)],
                   responses={(200, "application/gzip"): OpenApiResponse(description="a tar.gz of the signed bundle")})
    def get(self, request):
        scope = audit_scope_for_user(request.user, request.query_params.get("tenant"))
        since, until = _time(request, "since"), _time(request, "until")
        if not audit_export_allowed(request.user, scope):
            raise Forbidden(ErrorCode.LABEL_ABOVE_CLEARANCE,
                            "This log holds entries above your clearance; a bundle must hold every entry.")
        workdir = tempfile.mkdtemp(prefix="gatehouse-export-")
        try:
            summary = audit_export(os.path.join(workdir, "bundle"), tenant=scope, since=since, until=until, actor=request.user)
        except ExportError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise GatehouseError(exc.code, str(exc), status=409) from exc
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        response = StreamingHttpResponse(_tar_stream(summary["path"], workdir), content_type="application/gzip")
        response["Content-Disposition"] = 'attachment; filename="audit-bundle.tar.gz"'
        response["X-Audit-Entries"] = str(summary["entries"])
        response["X-Audit-Range"] = f"{summary['begin']}-{summary['end']}"
        response["X-Audit-Checkpoint-Size"] = str(summary["checkpoint_size"])
        return response


class AuditCheckpointLatestApi(PlatformLogScope, APIView):
    permission_classes = [IsAuditor]

    @extend_schema(parameters=[OpenApiParameter("tenant", str)], responses=OpenApiResponse(description="latest checkpoint"))
    def get(self, request):
        scope = audit_scope_for_user(request.user, request.query_params.get("tenant"))
        return Response(audit_checkpoint_status(scope))
