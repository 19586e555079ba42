"""Analysts' pages: the inbox of gates awaiting my decision, a gate (what I would sign, the
artefacts it shows, its options and form, my decision and its signature), my past decisions."""
from __future__ import annotations

import base64
import json

from django.conf import settings
from django.contrib import messages
from django.shortcuts import redirect, render

from approvals import selectors as gate_selectors
from approvals.models import Decision
from approvals.services import gate_decide, may_decide
from approvals.signing.document import label_digest, shown_digest, shown_view
from approvals.signing.keys import active_key, approver_id, gate_facts
from audit.services import audit_append
from gateway import selectors
from gateway.errors import ErrorCode, GatehouseError, NotFound, record_refusal
from gateway.identity.conf import request_access_token
from gateway.storage import artefact_content_response

from .banners import page_banner
from .common import page, render_page
from .dag import dag_svg
from .forms import form_fields, form_input
from .previews import IMAGE_TYPES, artefact_preview


INBOX_LIMIT = 200  # the nearest deadlines first; the API pages through the rest
# The columns the inbox shows (partials/inbox.html), nothing more: a row loaded whole brings its gate's
# JSON columns, its task's spec and its run's workflow source, decoded for 200 rows on every page load.
INBOX_FIELDS = ("id", "title", "classification", "required_approvals", "deadline", "run__name")


def _inbox(user) -> dict:
    # The selectors' scoping (tenant, labels, eligibility) is untouched: only the columns read change.
    gates = (gate_selectors.gate_list_awaiting_user(user).select_related(None).select_related("run")
             .only(*INBOX_FIELDS))
    rows = list(gate_selectors.gate_list_with_progress(gates)[:INBOX_LIMIT + 1])
    return {"gates": rows[:INBOX_LIMIT], "more": len(rows) > INBOX_LIMIT, "limit": INBOX_LIMIT}


@page()
def inbox(request):
    context = _inbox(request.user)
    return render_page(request, "portal/inbox.html", context, labels=[g.classification for g in context["gates"]])


@page(partial=True)
def inbox_partial(request):
    context = _inbox(request.user)
    context["banner"] = page_banner(g.classification for g in context["gates"])
    return render(request, "partials/inbox.html", context)


def _gate_context(request, gate, *, fields=None, raw_input="", errors=None):
    user = request.user
    run_tasks = list(selectors.task_list_for_run(gate.run, user))
    previews, labels = [], {gate.classification, *(t.classification for t in run_tasks)}
    for shown in gate.shows:
        if not shown.get("artefact"):
            previews.append({"ref": shown["ref"], "preview": None})
            continue
        try:
            artefact = selectors.artefact_get_for_user(shown["artefact"], user)
        except NotFound:
            previews.append({"ref": shown["ref"], "preview": None})
            continue
        labels.add(artefact.classification)
        previews.append({"ref": shown["ref"], "preview": artefact_preview(artefact)})
    facts = gate_facts(gate)
    mine = (Decision.objects.filter(gate=gate, approver=user).select_related("signature", "signature__key")
            .order_by("-created_at"))
    decided = [{"decision": d, "signature_b64": base64.b64encode(bytes(d.signature.signature)).decode()
                if getattr(d, "signature", None) else "",
                "document": bytes(d.signature.document).decode() if getattr(d, "signature", None) else ""}
               for d in mine]
    voted = any(d.gate_revision == gate.revision for d in mine)
    key = active_key(user, settings.GATEHOUSE_APPROVAL_SIGNING["BACKEND"])
    progress = gate_selectors.gate_list_with_progress(gate_selectors.gate_list_for_user(user).filter(id=gate.id)).first()
    context = {
        "gate": gate, "run_tasks": run_tasks, "previews": previews,
        "dag": dag_svg(run_tasks, highlight_key=gate.task.key, title=f"{gate.run.name}: the gate {gate.task.key}"),
        "shown_json": json.dumps(shown_view(facts), indent=2, ensure_ascii=False),
        "shown_digest": shown_digest(facts), "label_digest": label_digest(facts["label"]),
        "approver_id": approver_id(user), "key": key,
        "can_decide": gate.state == "OPEN" and not voted and may_decide(gate, user) and gate.run.submitter_id != user.pk,
        "may_decide": may_decide(gate, user), "voted": voted,
        "fields": fields if fields is not None else form_fields(gate.form),
        "raw_input": raw_input or (json.dumps(gate.form.get("examples", [{}])[0], indent=2)
                                   if isinstance(gate.form, dict) and gate.form.get("examples") else ""),
        "errors": errors or {}, "decided": decided,
        "progress": progress, "approvals_given": progress.approvals_given if progress else 0,
        "approvals_needed": progress.approvals_needed if progress else 0,
    }
    return context, labels


@page()
def gate_page(request, gate_id):
    gate = gate_selectors.gate_get_for_user(gate_id, request.user)
    if request.method == "POST":
        value, fields, raw, errors = form_input(gate.form, request.POST)
        if errors:
            record_refusal(request, 400, ErrorCode.GATE_INPUT_INVALID, "The decision form has errors.")
            context, labels = _gate_context(request, gate, fields=fields, raw_input=raw, errors=errors)
            messages.error(request, "The form has errors; nothing was decided.")
            return render_page(request, "portal/gate.html", context, labels=labels, status=400)
        try:
            gate_decide(gate=gate, actor=request.user, option=request.POST.get("option", ""), input_value=value,
                        comment=request.POST.get("comment", "")[:2000], access_token=request_access_token(request))
        except GatehouseError as exc:  # refused and audited by the service
            context, labels = _gate_context(request, gate, fields=fields, raw_input=raw)
            messages.error(request, f"{exc.message} ({exc.code})")
            return render_page(request, "portal/gate.html", context, labels=labels, status=exc.status)
        messages.success(request, "Your decision was signed and recorded.")
        return redirect("gate-page", gate_id=gate.id)
    audit_append(event="gate.read", tenant_id=gate.tenant_id, actor=request.user, obj=gate)
    context, labels = _gate_context(request, gate)
    return render_page(request, "portal/gate.html", context, labels=labels)


def _gate_page_labels(gate, user) -> set[str]:
    """Every label the gate page renders: the gate's, its run's tasks' (the DAG) and the shown artefacts'."""
    shown = [s["artefact"] for s in gate.shows if s.get("artefact")]
    return {gate.classification,
            *selectors.task_list_for_run(gate.run, user).values_list("classification", flat=True),
            *selectors.artefact_list_for_user(user).filter(id__in=shown).values_list("classification", flat=True)}


@page(partial=True)
def gate_partial(request, gate_id):
    """The gate's live state (open, approvals still needed); 404 once the viewer may no longer see it.
    Its banner is the whole page's, so a refresh never lowers it below what the page still shows."""
    gate = gate_selectors.gate_get_for_user(gate_id, request.user)
    progress = gate_selectors.gate_list_with_progress(
        gate_selectors.gate_list_for_user(request.user).filter(id=gate.id)).first()
    return render(request, "partials/gate_status.html",
                  {"gate": gate, "progress": progress, "banner": page_banner(_gate_page_labels(gate, request.user))})


@page()
def decisions(request):
    visible = gate_selectors.gate_list_for_user(request.user)
    rows = list(Decision.objects.filter(approver=request.user, gate__in=visible)
                .select_related("gate", "gate__run", "signature", "signature__key").order_by("-created_at")[:200])
    return render_page(request, "portal/decisions.html", {"decisions": rows},
                       labels=[d.gate.classification for d in rows])


@page()
def artefact_content(request, artefact_id):
    """An artefact's bytes for the portal: images inline (for previews), anything else as a
    download. Scoped, digest-checked by the store, audited like the API's content view."""
    artefact = selectors.artefact_get_for_user(artefact_id, request.user)
    media = (artefact.media_type or "").split(";")[0].strip().lower()
    inline = media in IMAGE_TYPES
    return artefact_content_response(artefact, request.user, content_type=media if inline else "application/octet-stream",
                                     disposition="inline" if inline else "attachment")


