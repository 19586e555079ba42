"""Auditors' pages: search and filter the audit log, the latest checkpoint and its checks, and
signed exports. An export is a job (audit/export_jobs.py) written by a Celery worker; its page
polls a small status partial for progress and offers the tar.gz once done."""
from __future__ import annotations

import json
from contextlib import nullcontext
from datetime import datetime, time
from datetime import timezone as dt_timezone
from urllib.parse import urlencode

from django.contrib import messages
from django.http import FileResponse
from django.shortcuts import redirect, render
from django.utils.dateparse import parse_date, parse_datetime
from django.utils import timezone

from audit.export_jobs import (
    export_job_get_for_user,
    export_job_list_for_user,
    export_job_open_for_download,
    export_job_progress,
    export_job_request,
)
from audit.selectors import (
    audit_checkpoint_status,
    audit_entries_for_user,
    audit_export_allowed,
    audit_scope_for_user,
    is_platform_auditor,
)
from audit.services import audit_append
from gateway import dbscope
from gateway.choices import Role
from gateway.errors import ErrorCode, GatehouseError, record_refusal
from gateway.models import Tenant

from .common import page, render_page

FILTERS = {"event": "event", "outcome": "outcome", "object_type": "object_type", "object_id": "object_id",
           "actor": "actor__username"}
PAGE = 100


def _when(params, name: str):
    raw = params.get(name, "").strip()
    if not raw:
        return None
    try:
        value = parse_datetime(raw)
        if value is None and (day := parse_date(raw)) is not None:
            value = datetime.combine(day, time.min)
    except ValueError:  # well formed but not a real date (2026-02-30)
        value = None
    if value is None:
        raise GatehouseError(ErrorCode.INVALID, f"{name}: not a date or time (e.g. 2026-01-31 or 2026-01-31T12:00).")
    return value if value.tzinfo else timezone.make_aware(value, dt_timezone.utc)


def _wide(request):
    """A platform auditor reads across tenants (row-level security widened for this read only)."""
    return dbscope.system_scope() if is_platform_auditor(request.user) else nullcontext()


@page(Role.AUDITOR, Role.PLATFORM_AUDITOR)
def audit_search(request):
    query = {k: request.GET.get(k, "").strip() for k in [*FILTERS, "since", "until", "tenant"]}
    with _wide(request):
        entries = audit_entries_for_user(request.user, query["tenant"] or None)
        for param, field in FILTERS.items():
            if query[param]:
                entries = entries.filter(**{field: query[param]})
        if (since := _when(request.GET, "since")) is not None:
            entries = entries.filter(at__gte=since)
        if (until := _when(request.GET, "until")) is not None:
            entries = entries.filter(at__lt=until)
        try:
            offset = max(int(request.GET.get("offset", "0")), 0)
        except ValueError:
            offset = 0
        rows = list(entries.order_by("-id")[offset:offset + PAGE + 1])
        scope = audit_scope_for_user(request.user, query["tenant"] or None)
        status = audit_checkpoint_status(scope)
        tenants = list(Tenant.objects.order_by("slug").values_list("slug", flat=True)) \
            if is_platform_auditor(request.user) else []
    audit_append(event="audit.searched", actor=request.user, tenant_id=request.user.membership.tenant_id,
                 data={k: v for k, v in query.items() if v})
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    for entry in rows:  # what the entry records, shown as JSON text (escaped by the template)
        data = entry.body.get("data") if isinstance(entry.body, dict) else None
        entry.data_json = json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True) if data else ""
    params = urlencode({k: v for k, v in query.items() if v})
    return render_page(request, "portal/audit.html", {
        "entries": rows, "query": query, "checkpoint": status, "tenants": tenants,
        "next_offset": offset + PAGE if more else None, "prev_offset": max(offset - PAGE, 0) if offset else None,
        "params": params,
    }, labels=[e.label for e in rows])


def _export_context(request, tenant_slug):
    scope = audit_scope_for_user(request.user, tenant_slug)
    return {"checkpoint": audit_checkpoint_status(scope), "allowed": audit_export_allowed(request.user, scope),
            "tenants": list(Tenant.objects.order_by("slug").values_list("slug", flat=True))
            if is_platform_auditor(request.user) else [],
            "tenant": tenant_slug or "", "scope": scope,
            "jobs": [(job, *export_job_progress(job)) for job in export_job_list_for_user(request.user, scope)]}


@page(Role.AUDITOR, Role.PLATFORM_AUDITOR)
def audit_exports(request):
    """The exports of a log: request one (POST: a job for the Celery worker), and the earlier ones."""
    if request.method == "POST":
        with _wide(request):
            tenant_slug = request.POST.get("tenant", "").strip() or None
            try:
                since, until = _when(request.POST, "since"), _when(request.POST, "until")
            except GatehouseError as exc:
                record_refusal(request, exc.status, exc.code, exc.message)
                messages.error(request, exc.message)
                return render_page(request, "portal/audit_exports.html",
                                   {**_export_context(request, tenant_slug), "error": exc}, status=exc.status)
            job = export_job_request(user=request.user, tenant_slug=tenant_slug, since=since, until=until)
        messages.success(request, "The export was queued.")
        return redirect("portal-audit-export", job_id=job.id)
    with _wide(request):
        context = _export_context(request, request.GET.get("tenant", "").strip() or None)
    return render_page(request, "portal/audit_exports.html", context)


def _job_context(request, job_id):
    with _wide(request):
        job = export_job_get_for_user(job_id, request.user)
        written, total = export_job_progress(job)
    percent = 100 if job.state == "DONE" else (int(written * 100 / total) if total else 0)
    return {"job": job, "written": written, "total": total, "percent": percent}


@page(Role.AUDITOR, Role.PLATFORM_AUDITOR)
def audit_export_job(request, job_id):
    return render_page(request, "portal/audit_export_job.html", _job_context(request, job_id))


@page(Role.AUDITOR, Role.PLATFORM_AUDITOR, partial=True)
def audit_export_job_partial(request, job_id):
    return render(request, "partials/export_job.html", _job_context(request, job_id))


@page(Role.AUDITOR, Role.PLATFORM_AUDITOR)
def audit_export_download(request, job_id):
    """The finished bundle, to auditors of its log who are cleared for all of it; audited."""
    with _wide(request):
        job, path = export_job_open_for_download(job_id, request.user)
    response = FileResponse(path.open("rb"), content_type="application/gzip", as_attachment=True,
                            filename=job.file_name)
    response["X-Content-SHA256"] = job.file_sha256
    response["X-Audit-Entries"] = str(job.entries_written)
    return response
