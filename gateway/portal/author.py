"""Workflow authors' pages: submit (paste or upload YAML; errors shown with task and line), the
runs list, a run (tasks and their states, the DAG, logs and artefacts, cancel)."""
from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect, render

from approvals import selectors as gate_selectors
from gateway import selectors
from gateway.choices import Role
from gateway.errors import ErrorCode, GatehouseError, record_refusal
from gateway.services import run_cancel, run_submit, workflow_parse

from .banners import page_banner
from .common import page, render_page
from .dag import dag_svg

MAX_UPLOAD = 1024 * 1024  # the spec loader has its own, smaller limits; this only bounds the read


@page()
def runs(request):
    rows = list(selectors.run_list_for_user(request.user).order_by("-created_at")[:200])
    return render_page(request, "portal/runs.html", {"runs": rows}, labels=[r.classification for r in rows])


def _run_context(request, run):
    tasks = list(selectors.task_list_for_run(run, request.user))
    artefacts = list(selectors.artefact_list_for_user(request.user).filter(run=run).order_by("task_id", "name"))
    gates = {g.task_id: g for g in gate_selectors.gate_list_for_user(request.user).filter(run=run)}
    logs = [a for a in artefacts if a.name in ("stdout", "stderr")]
    outputs = [a for a in artefacts if a.name not in ("stdout", "stderr")]
    labels = [run.classification, *(t.classification for t in tasks), *(a.classification for a in artefacts)]
    context = {"run": run, "tasks": tasks, "gates": gates, "logs": logs, "outputs": outputs,
               "dag": dag_svg(tasks, title=f"{run.name}: tasks and their needs"),
               "may_cancel": run.state == "RUNNING" and request.user.membership.roles
               and any(request.user.membership.has_role(r) for r in (Role.AUTHOR, Role.TENANT_ADMIN)),
               "banner": page_banner(labels)}
    return context, labels


@page()
def run_page(request, run_id):
    run = selectors.run_get_for_user(run_id, request.user)
    context, labels = _run_context(request, run)
    return render_page(request, "portal/run.html", context, labels=labels)


@page(partial=True)
def run_partial(request, run_id):
    run = selectors.run_get_for_user(run_id, request.user)
    context, _ = _run_context(request, run)
    return render(request, "partials/run.html", context)


@page(Role.AUTHOR, Role.TENANT_ADMIN)
def run_cancel_view(request, run_id):
    if request.method != "POST":
        raise GatehouseError(ErrorCode.METHOD_NOT_ALLOWED, "Cancel with the button on the run page.", status=405)
    run = selectors.run_get_for_user(run_id, request.user)
    run_cancel(run=run, actor=request.user, reason=request.POST.get("reason", "").strip()[:500] or "cancelled")
    messages.success(request, "The run was cancelled.")
    return redirect("run-page", run_id=run.id)


@page(Role.AUTHOR, Role.TENANT_ADMIN)
def submit(request):
    context = {"source": "", "issues": [], "error": None, "validated": False}
    if request.method == "POST":
        upload = request.FILES.get("file")
        if upload is not None:
            source, filename = upload.read(MAX_UPLOAD + 1), upload.name
        else:
            source, filename = request.POST.get("source", ""), "<pasted>"
        text = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
        context["source"] = text
        try:
            if len(source) > MAX_UPLOAD:
                raise GatehouseError(ErrorCode.SPEC_INVALID, "The file is too large.",
                                     detail=[{"code": "too_large", "message": "over 1 MiB", "line": None}])
            if request.POST.get("action") == "validate":
                workflow_parse(source, filename=filename, tenant=request.user.membership.tenant)
                context["validated"] = True
                messages.success(request, "The workflow is valid.")
            else:
                run = run_submit(tenant=request.user.membership.tenant, actor=request.user, source=source,
                                 filename=filename)
                messages.success(request, f"Run {run.name} submitted.")
                return redirect("run-page", run_id=run.id)
        except GatehouseError as exc:
            record_refusal(request, exc.status, exc.code, exc.message)
            issues = exc.detail if isinstance(exc.detail, list) else []
            context.update(error=exc, issues=[i for i in issues if isinstance(i, dict)])
            lines = text.splitlines()
            for issue in context["issues"]:
                line = issue.get("line")
                issue["source_line"] = lines[line - 1] if isinstance(line, int) and 0 < line <= len(lines) else ""
            return render_page(request, "portal/submit.html", context, status=exc.status)
    return render_page(request, "portal/submit.html", context)
