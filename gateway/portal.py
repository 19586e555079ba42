"""A first portal: my runs, gates awaiting me, a run's tasks, a gate's decision form.
The same services and selectors as the API serve it."""
from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from approvals import selectors as gate_selectors
from approvals.services import gate_decide
from audit.services import audit_append

from . import selectors
from .errors import ErrorCode, GatehouseError, record_refusal
from .identity.conf import request_access_token


def _refused(request, exc: GatehouseError):
    """The portal's refusals are audited like the API's (gateway.errors.record_refusal)."""
    record_refusal(request, exc.status, exc.code, exc.message)
    return render(request, "error.html", {"error": exc}, status=exc.status)


def csrf_failure(request, reason=""):
    """A state-changing form without its CSRF token: refused (403) and audited."""
    record_refusal(request, 403, ErrorCode.CSRF_FAILED, f"CSRF check failed: {reason}"[:300])
    error = GatehouseError(ErrorCode.CSRF_FAILED, "The form expired or did not come from this site; reload the page.",
                           status=403)
    return render(request, "error.html", {"error": error}, status=403)


@login_required
def home(request):
    try:
        runs = list(selectors.run_list_for_user(request.user).order_by("-created_at")[:50])
        gates = list(gate_selectors.gate_list_awaiting_user(request.user)[:50])
    except GatehouseError as exc:
        return _refused(request, exc)
    return render(request, "home.html", {"runs": runs, "gates": gates})


@login_required
def run_page(request, run_id):
    try:
        run = selectors.run_get_for_user(run_id, request.user)
    except GatehouseError as exc:
        return _refused(request, exc)
    tasks = selectors.task_list_for_run(run, request.user)
    artefacts = selectors.artefact_list_for_user(request.user).filter(run=run).order_by("created_at")
    gates = gate_selectors.gate_list_for_user(request.user).filter(run=run)
    return render(request, "run.html", {"run": run, "tasks": tasks, "artefacts": artefacts, "gates": gates})


@login_required
def gate_page(request, gate_id):
    try:
        gate = gate_selectors.gate_get_for_user(gate_id, request.user)
    except GatehouseError as exc:
        return _refused(request, exc)
    if request.method == "POST":
        raw = request.POST.get("input", "").strip()
        try:
            value = json.loads(raw) if raw else None
        except json.JSONDecodeError as exc:
            messages.error(request, f"The input is not valid JSON: {exc}")
        else:
            try:
                gate_decide(gate=gate, actor=request.user, option=request.POST.get("option", ""), input_value=value,
                            comment=request.POST.get("comment", ""), access_token=request_access_token(request))
            except GatehouseError as exc:
                messages.error(request, f"{exc.message} ({exc.code})")
            else:
                messages.success(request, "Your decision was recorded.")
                return redirect("run-page", run_id=gate.run_id)
    audit_append(event="gate.read", tenant_id=gate.tenant_id, actor=request.user, obj=gate)
    form_example = json.dumps(gate.form.get("examples", [{}])[0] if gate.form else {}, indent=2)
    return render(request, "gate.html", {"gate": gate, "form_schema": json.dumps(gate.form, indent=2) if gate.form else "", "form_example": form_example})
