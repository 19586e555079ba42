"""Write paths for gates: open, decide, time out, close on cancel."""
from __future__ import annotations

import base64
import hashlib
from datetime import timedelta

import jsonschema
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from guardian.shortcuts import assign_perm, get_objects_for_user

from audit.canonical import canonical
from audit.services import audit_append
from gateway.choices import TaskState
from gateway.clearances import member_of_tenant
from gateway.engine import after_terminal, task_transition
from gateway.errors import Conflict, ErrorCode, Forbidden, GatehouseError, NotFound
from gateway.models import Artefact, Membership, TaskInstance
from gateway.realtime import events as live
from gateway.selectors import visible_to
from gateway.spec import TaskSpec
from gateway.storage import get_store, tenant_key

from .choices import GateState, OnTimeout, Outcome
from .models import Decision, Gate, GateEligibility, GateGroupObjectPermission, GateUserObjectPermission


def _set_eligibility(gate: Gate, principals) -> None:
    GateEligibility.objects.filter(gate=gate).delete()
    GateEligibility.objects.bulk_create([GateEligibility(tenant_id=gate.tenant_id, gate=gate, principal=p) for p in sorted(set(principals))])


def gate_open(task: TaskInstance) -> Gate:
    """Called by the engine inside the transaction that moved a gate task to AWAITING_DECISION.
    Snapshots what the analyst will be shown, including the exact artefacts (by digest)."""
    spec = TaskSpec.from_dict(task.spec).gate
    shows = []
    for ref in spec.shows:
        artefact = (
            Artefact.objects.filter(run_id=task.run_id, task__key=ref.task, name=ref.name).order_by("-attempt").first()
        )
        shows.append(
            {
                "ref": str(ref),
                "artefact": str(artefact.id) if artefact else None,
                "digest": artefact.digest if artefact else None,
            }
        )
    now = timezone.now()
    gate = Gate.objects.create(
        tenant_id=task.tenant_id,
        run_id=task.run_id,
        task=task,
        title=spec.title,
        instructions=spec.instructions,
        options=[{"name": o.name, "label": o.label, "outcome": o.outcome} for o in spec.options],
        form=spec.form,
        shows=shows,
        approvers=list(spec.approvers),
        required_approvals=spec.required_approvals,
        required_rejections=spec.required_rejections,
        classification=task.classification,
        on_timeout=spec.on_timeout,
        escalate_to=list(spec.escalate_to),
        timeout_seconds=spec.timeout,
        deadline=now + timedelta(seconds=spec.timeout) if spec.timeout else None,
    )
    _set_eligibility(gate, spec.approvers)
    audit_append(event="gate.opened", tenant_id=task.tenant_id, obj=gate, data={"run": str(task.run_id), "task": task.key})
    live.gate_opened(gate)
    return gate


def _conclude(gate: Gate, task: TaskInstance, *, state: str, task_state: str, reason: str, actor=None, input_value=None) -> None:
    gate.state = state
    gate.decided_at = timezone.now()
    gate.outcome_reason = reason
    gate.save(update_fields=["state", "decided_at", "outcome_reason"])
    if state == GateState.APPROVED:
        # The analyst's input becomes the gate's one artefact, the input of the tasks after it.
        blob = get_store().put_bytes(tenant_key(task.tenant_id), canonical(input_value))
        Artefact.objects.create(
            tenant_id=task.tenant_id,
            run_id=task.run_id,
            task=task,
            attempt=task.attempt,
            name="input",
            digest=blob.digest,
            size=blob.size,
            media_type="application/json",
            classification=task.classification,
        )
    task_transition(task, task_state, transition_id=f"conclude:{gate.id}:{gate.revision}", reason=reason, actor=actor)
    live.gate_closed(gate)
    after_terminal(task)


def _refuse(gate: Gate, actor, code: str, message: str, exc_class=GatehouseError, **detail):
    """Refusals are recorded even though the request changes nothing else."""
    with transaction.atomic():
        audit_append(
            event="gate.decision_refused",
            tenant_id=gate.tenant_id,
            actor=actor,
            obj=gate,
            outcome="denied",
            data={"code": code, **detail},
        )
    raise exc_class(code, message)


def assigned_gates(user):
    """Gates this user holds a per-object grant to decide (never a global grant, never as superuser)."""
    return get_objects_for_user(user, "approvals.decide_gate", klass=Gate.objects.all(),
                                accept_global_perms=False, with_superuser=False)


def assigned_gate_filter(user) -> Q:
    """`pk IN` the gates of assigned_gates(user), read straight from the grant tables (user and group
    grants, never global ones), for list filters: guardian's queryset wraps the same in a scan of
    every gate of every tenant, which a list of open gates cannot afford."""
    def granted(model, **who):
        return model.objects.filter(permission__codename="decide_gate",
                                    permission__content_type__app_label="approvals", **who).values("content_object_id")

    return Q(pk__in=granted(GateUserObjectPermission, user=user)) | Q(pk__in=granted(GateGroupObjectPermission,
                                                                                     group__user=user))


def same_person(a, b) -> bool:
    """Two accounts of one person: the same account, or the same e-mail address (the identity
    provider keeps addresses unique and verified, so a second account of the same address is the
    same person)."""
    if a is None or b is None:
        return False
    if a.pk == b.pk:
        return True
    return bool(a.email) and a.email.strip().lower() == (b.email or "").strip().lower()


def may_decide(gate: Gate, user) -> bool:
    """Among the gate's approvers by role or group in the gate's tenant, or assigned to it."""
    membership = Membership.objects.filter(user=user, tenant_id=gate.tenant_id).first()
    if membership is None:
        return False
    return bool(membership.principals() & set(gate.approvers)) or assigned_gates(user).filter(pk=gate.pk).exists()


def gate_assign(*, gate: Gate, user, actor) -> None:
    """Let one member decide one gate although their roles and groups are not among its approvers.
    The member must be of the gate's tenant and cleared for its label."""
    member_of_tenant(gate.tenant, user.pk)
    if not visible_to(gate, user):
        raise Conflict(ErrorCode.ASSIGNEE_NOT_CLEARED, "That member's clearance does not cover the gate's label.")
    with transaction.atomic():
        assign_perm("approvals.decide_gate", user, gate)
        audit_append(event="gate.assigned", tenant_id=gate.tenant_id, actor=actor, obj=gate,
                     data={"user": user.get_username()})
        live.gate_changed(gate)


def gate_unassign(*, gate: Gate, user, actor) -> None:
    member_of_tenant(gate.tenant, user.pk)
    with transaction.atomic():
        removed = GateUserObjectPermission.objects.filter(content_object=gate, user=user,
                                                          permission__codename="decide_gate").delete()[0]
        if not removed:
            raise NotFound("That member is not assigned to this gate.")
        audit_append(event="gate.unassigned", tenant_id=gate.tenant_id, actor=actor, obj=gate,
                     data={"user": user.get_username()})
        live.gate_changed(gate)


def _signer(actor, access_token: str | None):
    """The approver's signer. In the embedded default (keys on the server) a first decision enrols
    the approver's key (audited); with Vault Transit the key must exist and the approver's own
    access token is what lets Vault sign with it."""
    from django.conf import settings

    from .signing.keys import SigningKeyError, approver_key_enrol
    from .signing.models import KeyBackend
    from .signing.signers import signer_for

    try:
        return signer_for(actor, access_token=access_token)
    except SigningKeyError:
        if settings.GATEHOUSE_APPROVAL_SIGNING["BACKEND"] != KeyBackend.LOCAL:
            raise
        approver_key_enrol(actor, actor=actor, backend=KeyBackend.LOCAL)
        return signer_for(actor, access_token=access_token)


def _sign(gate: Gate, actor, chosen: dict, input_value, signed, access_token):
    """The signed decision: the one the client sent (checked when recorded), or one made now with the
    approver's key. Refusals are audited and answer 400 (bad signature) or 503 (no signer)."""
    from .signing.decisions import SignatureRefused, decision_sign
    from .signing.keys import SigningKeyError
    from .signing.signers import SigningError

    if signed is not None:
        return signed
    try:
        return decision_sign(_signer(actor, access_token), gate=gate, approver=actor, option=chosen["name"],
                             input_value=input_value)
    except SignatureRefused as exc:
        _refuse(gate, actor, ErrorCode.SIGNATURE_REFUSED, f"The signature was refused: {exc.message}", kind=exc.kind)
    except (SigningError, SigningKeyError) as exc:
        _refuse(gate, actor, ErrorCode.SIGNER_UNAVAILABLE, f"The decision could not be signed: {exc}",
                lambda code, message: GatehouseError(code, message, status=503))


def gate_decide(*, gate: Gate, actor, option: str, input_value=None, comment: str = "", signed=None,
                access_token: str | None = None) -> Decision:
    """One analyst's decision, signed by them (approvals/signing): `signed` when the client signed the
    document itself, else signed now with the approver's key (`access_token`: theirs, for Vault).
    The signature is verified when recorded and again at release. The first conclusive outcome
    wins: `required_approvals` distinct standing approvals release the dependants at once; one
    rejection skips them."""
    from .signing.decisions import SignatureRefused, decision_signature_record

    if gate.state != GateState.OPEN:  # checked again under the lock below
        raise Conflict(ErrorCode.GATE_ALREADY_DECIDED, f"The gate is already {gate.state.lower()}.")
    # Scope again in the write path (the API read the gate through the selector; other callers may not).
    if not visible_to(gate, actor):
        raise NotFound("No such gate.")
    if not may_decide(gate, actor):
        _refuse(gate, actor, ErrorCode.GATE_NOT_APPROVER, "You are not an approver of this gate.", Forbidden)
    if same_person(actor, gate.run.submitter):
        _refuse(gate, actor, ErrorCode.GATE_SELF_APPROVAL, "Nobody may decide a gate of a run they submitted.",
                Forbidden)
    chosen = gate.option(option)
    if chosen is None:
        _refuse(gate, actor, ErrorCode.GATE_UNKNOWN_OPTION, f"Unknown option {option!r}.", option=option)
    if gate.form is not None:
        try:
            jsonschema.Draft202012Validator(gate.form).validate({} if input_value is None else input_value)
        except jsonschema.ValidationError as exc:
            path = "/" + "/".join(str(p) for p in exc.absolute_path)
            _refuse(gate, actor, ErrorCode.GATE_INPUT_INVALID, f"The input does not match the gate's form at {path}: {exc.message}")
    signed = _sign(gate, actor, chosen, input_value, signed, access_token)  # outside the lock: Vault is remote
    try:
        with transaction.atomic():
            task = TaskInstance.objects.select_for_update().get(id=gate.task_id)
            gate = Gate.objects.select_for_update().get(id=gate.id)
            if gate.state != GateState.OPEN:
                raise Conflict(ErrorCode.GATE_ALREADY_DECIDED, f"The gate is already {gate.state.lower()}.")
            if Decision.objects.filter(gate=gate, gate_revision=gate.revision, approver=actor).exists():
                raise Conflict(ErrorCode.GATE_ALREADY_VOTED, "You have already decided this gate.")
            decision = Decision.objects.create(
                tenant_id=gate.tenant_id,
                gate=gate,
                gate_revision=gate.revision,
                approver=actor,
                option=chosen["name"],
                outcome=chosen["outcome"],
                input=input_value,
                input_digest=hashlib.sha256(canonical(input_value)).hexdigest(),
                comment=comment,
            )
            signature = decision_signature_record(signed, gate=gate, decision=decision, expect_approver=actor,
                                                  expect_option=chosen["name"], expect_input=input_value)
            audit_append(
                event="gate.decided",
                tenant_id=gate.tenant_id,
                actor=actor,
                obj=gate,
                data={"option": decision.option, "outcome": decision.outcome, "input_digest": decision.input_digest,
                      "key_id": signature.key.key_id, "document_sha256": signature.document_sha256,
                      "signature": base64.b64encode(bytes(signature.signature)).decode("ascii"),
                      "nonce": signature.nonce},
            )
            live.gate_changed(gate)  # an approval recorded (a conclusive one also closes it, below)
            if decision.outcome == Outcome.REJECT:
                rejecting = _standing(gate, Outcome.REJECT)
                rejections = len(rejecting)
                if rejections >= gate.required_rejections:
                    by = (f"rejected by {actor.get_username()} ({decision.option})" if gate.required_rejections == 1
                          else f"rejected ({rejections} of {gate.required_rejections})")
                    _conclude(gate, task, state=GateState.REJECTED, task_state=TaskState.REJECTED, reason=by,
                              actor=actor)
                    audit_append(event="gate.rejected", tenant_id=gate.tenant_id, actor=actor, obj=gate,
                                 data={"rejections": _signed_digests(rejecting)})
            else:
                standing = _standing(gate, Outcome.APPROVE)
                approvals = len(standing)
                if approvals >= gate.required_approvals:
                    _conclude(gate, task, state=GateState.APPROVED, task_state=TaskState.SUCCEEDED,
                              reason=f"{decision.option} ({approvals} of {gate.required_approvals})", actor=actor,
                              input_value=input_value)
                    audit_append(event="gate.released", tenant_id=gate.tenant_id, actor=actor, obj=gate,
                                 data={"approvals": _signed_digests(standing)})
            return decision
    except SignatureRefused as exc:  # the transaction rolled back: no decision, no signature
        status = 409 if exc.kind == "replayed" else 400
        _refuse(gate, actor, ErrorCode.SIGNATURE_REFUSED, f"The signature was refused: {exc.message}",
                lambda code, message: GatehouseError(code, message, status=status), kind=exc.kind)
    except IntegrityError:  # the same person deciding twice at once: the unique constraint holds
        raise Conflict(ErrorCode.GATE_ALREADY_VOTED, "You have already decided this gate.") from None


def approval_void_reason(decision: Decision, gate: Gate) -> str:
    """Why an approval no longer counts, or "" while it does."""
    user = decision.approver
    if decision.gate_revision != gate.revision:
        return "gate revised"
    if not user.is_active:
        return "approver disabled"
    if not may_decide(gate, user):
        return "approver no longer eligible"
    if not visible_to(gate, user):
        return "clearance no longer covers the gate"
    if same_person(user, gate.run.submitter):
        return "approver submitted the run"
    return ""


def _standing(gate: Gate, outcome: str) -> list[Decision]:
    """The decisions of `outcome` that still count, each re-checked now (under the gate's lock, when
    they could conclude it): the others are voided and audited, so a clearance revoked or a role
    removed since the decision was made never helps conclude the gate."""
    standing, seen = [], set()
    rows = (Decision.objects.select_related("approver").select_for_update(of=("self",))
            .filter(gate=gate, outcome=outcome, voided_at__isnull=True).order_by("created_at"))
    for decision in rows:
        reason = approval_void_reason(decision, gate) or _signature_void_reason(decision, gate)
        if reason:
            _void(decision, gate, reason)
        elif decision.approver_id not in seen:
            seen.add(decision.approver_id)
            standing.append(decision)
    return standing


def _signature_void_reason(decision: Decision, gate: Gate) -> str:
    """The decision's signature verified again, now: a key revoked since, or a document that no
    longer matches the gate, voids the approval."""
    from .signing.decisions import SignatureRefused, SignedDecision, decision_signature_check
    from .signing.models import DecisionSignature

    row = DecisionSignature.objects.select_related("key").filter(decision=decision).first()
    if row is None:
        return "unsigned"
    signed = SignedDecision.from_wire(bytes(row.document), bytes(row.signature))
    try:
        decision_signature_check(signed, gate=gate, expect_approver=decision.approver, expect_option=decision.option)
    except SignatureRefused as exc:
        return f"signature no longer verifies ({exc.kind})"
    return ""


def _signed_digests(decisions: list[Decision]) -> list[dict]:
    """Who released the gate, each with the hash of the document they signed."""
    from .signing.models import DecisionSignature

    hashes = dict(DecisionSignature.objects.filter(decision__in=decisions).values_list("decision_id", "document_sha256"))
    return [{"approver": d.approver.get_username(), "decision": str(d.id), "document_sha256": hashes.get(d.id)}
            for d in decisions]


def _void(decision: Decision, gate: Gate, reason: str, actor=None) -> None:
    decision.voided_at, decision.void_reason = timezone.now(), reason
    decision.save(update_fields=["voided_at", "void_reason"])
    audit_append(event="decision.voided", tenant_id=gate.tenant_id, actor=actor, obj=gate,
                 data={"decision": str(decision.id), "approver": decision.approver.get_username(), "reason": reason})
    if gate.state == GateState.OPEN:
        live.gate_changed(gate)  # approvals still needed changed


def decisions_void_for(user, *, actor=None) -> int:
    """Void the open-gate approvals of `user` that no longer stand (after their clearance, roles or
    assignment changed), so what the gate shows is true before anyone tries to release it."""
    voided = 0
    open_decisions = (Decision.objects.select_related("gate", "gate__run", "approver")
                      .filter(approver=user, voided_at__isnull=True, gate__state=GateState.OPEN))
    for decision in open_decisions:
        with transaction.atomic():
            gate = Gate.objects.select_for_update().select_related("run").get(id=decision.gate_id)
            fresh = Decision.objects.select_related("approver").get(id=decision.id)
            if gate.state == GateState.OPEN and fresh.voided_at is None:
                reason = approval_void_reason(fresh, gate)
                if reason:
                    _void(fresh, gate, reason, actor=actor)
                    voided += 1
    return voided


def gate_relabel(*, gate: Gate, classification: str, actor) -> Gate:
    """Raise a gate's label (never lower it: that is a downgrade, a separate action). The gate's
    revision moves on, so every decision on the old revision stops counting, and the label flows on
    to the open tasks that read the gate's input, and to what reads theirs."""
    from gateway.clearances import label_parse, labels_register, require_clearance
    from gateway.labels import dominates, format_label, lub

    new = label_parse(classification)
    with transaction.atomic():
        task = TaskInstance.objects.select_for_update().get(id=gate.task_id)
        gate = Gate.objects.select_for_update().get(id=gate.id)
        if gate.state != GateState.OPEN:
            raise Conflict(ErrorCode.GATE_ALREADY_DECIDED, f"The gate is already {gate.state.lower()}.")
        old = label_parse(gate.classification)
        if not dominates(new, old):
            raise GatehouseError(ErrorCode.LABEL_DOWNGRADE, "A label can only be raised here; lowering it is a "
                                 "downgrade, a separate action.")
        require_clearance(actor, gate.tenant_id, [new], what="The new label")
        if new == old:
            return gate
        banner = format_label(new)
        labels_register(gate.tenant_id, [new])
        raised = {task.key: new}
        tasks = {t.key: t for t in TaskInstance.objects.select_for_update().filter(run_id=gate.run_id).order_by("id")}
        for key, row in tasks.items():  # topological order: rows are created that way
            sources = [i["from"].split("/", 1)[0] for i in row.spec.get("inputs", ())]
            sources += [ref.split("/", 1)[0] for ref in (row.spec.get("gate") or {}).get("shows", ())]
            if key in raised or not any(s in raised for s in sources) or row.terminal:
                continue
            raised[key] = lub(label_parse(row.classification), *(raised[s] for s in sources if s in raised))
        for key, label in raised.items():
            labels_register(gate.tenant_id, [label])
            TaskInstance.objects.filter(id=tasks[key].id).update(classification=format_label(label))
        before = gate.classification
        gate.classification, gate.revision = banner, gate.revision + 1
        gate.save(update_fields=["classification", "revision"])
        for decision in Decision.objects.select_related("approver").filter(gate=gate, voided_at__isnull=True):
            _void(decision, gate, "gate revised", actor=actor)
        audit_append(event="gate.revised", tenant_id=gate.tenant_id, actor=actor, obj=gate,
                     data={"before": before, "after": banner, "revision": gate.revision,
                           "tasks_raised": sorted(raised)})
        live.gate_relabelled(gate, before)
        live.task_states(TaskInstance.objects.filter(id__in=[tasks[k].id for k in raised]))  # their labels moved
    return gate


def gate_time_out(gate_id, now=None) -> str | None:
    """Apply a gate's on_timeout once its deadline has passed. A timeout never approves."""
    now = now or timezone.now()
    with transaction.atomic():
        gate = Gate.objects.filter(id=gate_id).first()
        if gate is None:
            return None
        task = TaskInstance.objects.select_for_update(skip_locked=True).filter(id=gate.task_id).first()
        if task is None:
            return None  # another reconciler holds it
        gate = Gate.objects.select_for_update().get(id=gate_id)
        if gate.state != GateState.OPEN or gate.deadline is None or gate.deadline > now:
            return None
        if gate.on_timeout == OnTimeout.ESCALATE and not gate.escalated:
            gate.escalated = True
            gate.approvers = list(gate.escalate_to)
            gate.deadline = now + timedelta(seconds=gate.timeout_seconds or 0)
            gate.save(update_fields=["escalated", "approvers", "deadline"])
            _set_eligibility(gate, gate.escalate_to)
            task_transition(task, TaskState.AWAITING_DECISION, transition_id=f"escalate:{gate.id}",
                            reason="escalated to " + ", ".join(gate.escalate_to))
            audit_append(event="gate.escalated", tenant_id=gate.tenant_id, obj=gate, data={"to": gate.escalate_to})
            live.gate_changed(gate)
            return "escalated"
        if gate.on_timeout == OnTimeout.EXPIRE:
            _conclude(gate, task, state=GateState.EXPIRED, task_state=TaskState.EXPIRED, reason="deadline passed")
            audit_append(event="gate.expired", tenant_id=gate.tenant_id, obj=gate)
            return "expired"
        # reject, and an escalated gate whose second deadline passed
        _conclude(gate, task, state=GateState.REJECTED, task_state=TaskState.REJECTED, reason="deadline passed")
        audit_append(event="gate.rejected", tenant_id=gate.tenant_id, obj=gate, data={"reason": "timeout"})
        return "rejected"


def gates_time_out(now=None) -> int:
    now = now or timezone.now()
    ids = list(Gate.objects.filter(state=GateState.OPEN, deadline__lte=now).values_list("id", flat=True)[:500])
    return sum(1 for gate_id in ids if gate_time_out(gate_id, now))


def gate_close_cancelled(task: TaskInstance) -> None:
    gates = list(Gate.objects.filter(task=task, state=GateState.OPEN).only("id", "run_id", "tenant_id", "classification"))
    Gate.objects.filter(id__in=[g.id for g in gates]).update(state=GateState.CANCELLED, decided_at=timezone.now())
    for gate in gates:
        live.gate_closed(gate)
