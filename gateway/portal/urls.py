"""Portal page URLs (included at the root by gateway/urls.py)."""
from django.urls import path

from . import admin, analyst, auditor, author, home

urlpatterns = [
    path("", home, name="home"),
    path("inbox/", analyst.inbox, name="portal-inbox"),
    path("inbox/partial/", analyst.inbox_partial, name="portal-inbox-partial"),
    path("gates/<uuid:gate_id>/", analyst.gate_page, name="gate-page"),
    path("gates/<uuid:gate_id>/partial/", analyst.gate_partial, name="portal-gate-partial"),
    path("decisions/", analyst.decisions, name="portal-decisions"),
    path("artefacts/<uuid:artefact_id>/content/", analyst.artefact_content, name="portal-artefact-content"),
    path("runs/", author.runs, name="portal-runs"),
    path("runs/<uuid:run_id>/", author.run_page, name="run-page"),
    path("runs/<uuid:run_id>/partial/", author.run_partial, name="portal-run-partial"),
    path("runs/<uuid:run_id>/cancel/", author.run_cancel_view, name="portal-run-cancel"),
    path("submit/", author.submit, name="portal-submit"),
    path("tenant/users/", admin.users, name="portal-tenant-users"),
    path("tenant/clearances/", admin.clearances, name="portal-tenant-clearances"),
    path("tenant/approver-groups/", admin.approver_groups, name="portal-tenant-groups"),
    path("tenant/backends/", admin.backends, name="portal-tenant-backends"),
    path("platform/tenants/", admin.tenants, name="portal-platform-tenants"),
    path("audit/", auditor.audit_search, name="portal-audit"),
    path("audit/exports/", auditor.audit_exports, name="portal-audit-exports"),
    path("audit/exports/<uuid:job_id>/", auditor.audit_export_job, name="portal-audit-export"),
    path("audit/exports/<uuid:job_id>/partial/", auditor.audit_export_job_partial, name="portal-audit-export-partial"),
    path("audit/exports/<uuid:job_id>/download/", auditor.audit_export_download, name="portal-audit-export-download"),
]
