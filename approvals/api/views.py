"""REST endpoints for gates: list those awaiting me, show one, decide."""
from __future__ import annotations

import hashlib
import json

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from approvals import selectors, services
from approvals.signing.decisions import SignatureRefused, SignedDecision, new_nonce
from approvals.signing.document import decision_document, document_bytes
from approvals.signing.keys import active_key, approver_id, approver_key_enrol, gate_facts
from approvals.signing.models import KeyBackend
from approvals.signing.receipts import receipt_build
from audit.services import audit_append
from gateway.api.strict import StrictSerializer
from gateway.clearances import member_of_tenant
from gateway.errors import Conflict, ErrorCode, Forbidden, GatehouseError
from gateway.identity.conf import request_access_token
from gateway.permissions import IsTenantAdmin

from .serializers import DecisionSerializer, GateDecideSerializer, GateDetailSerializer, GateSerializer


class GateListApi(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("scope", str, enum=["awaiting", "all"], description="awaiting (default): open gates I may decide")],
        responses=GateSerializer(many=True),
    )
    def get(self, request):
        scope = request.query_params.get("scope", "awaiting")
        if scope == "all":
            gates = selectors.gate_list_for_user(request.user).order_by("-opened_at")
        elif scope == "awaiting":
            gates = selectors.gate_list_awaiting_user(request.user)
        else:
            raise GatehouseError(ErrorCode.INVALID, "scope must be 'awaiting' or 'all'.")
        run = request.query_params.get("run")
        if run:
            gates = gates.filter(run_id=run)
        paginator = LimitOffsetPagination()
        # Progress in the same query, and not the run's source or the task's spec that no field shows.
        gates = selectors.gate_list_with_progress(gates).defer("run__spec_source", "task__spec")
        page = paginator.paginate_queryset(gates, request, view=self)
        return paginator.get_paginated_response(GateSerializer(page, many=True).data)


class GateDetailApi(APIView):
    @extend_schema(responses=GateDetailSerializer)
    def get(self, request, gate_id):
        gate = selectors.gate_get_for_user(gate_id, request.user)
        audit_append(event="gate.read", tenant_id=gate.tenant_id, actor=request.user, obj=gate)
        return Response(GateDetailSerializer(gate).data)


class GateDecideApi(APIView):
    @extend_schema(request=GateDecideSerializer, responses={201: DecisionSerializer})
    def post(self, request, gate_id):
        gate = selectors.gate_get_for_user(gate_id, request.user)
        serializer = GateDecideSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if len(json.dumps(data["input"])) > settings.GATEHOUSE_MAX_DECISION_INPUT_BYTES:
            raise GatehouseError(ErrorCode.GATE_INPUT_INVALID, "The input is too large.", status=413)
        signed = None
        if "document" in data:
            try:
                signed = SignedDecision.from_wire(data["document"], data["signature"])
            except SignatureRefused as exc:
                raise GatehouseError(ErrorCode.SIGNATURE_REFUSED, f"The signature was refused: {exc.message}",
                                     detail={"kind": exc.kind}) from None
        decision = services.gate_decide(
            gate=gate, actor=request.user, option=data["option"], input_value=data["input"], comment=data["comment"],
            signed=signed, access_token=request_access_token(request),
        )
        return Response(DecisionSerializer(decision).data, status=201)


class GateDocumentApi(APIView):
    """What the caller would sign to decide this gate with `option` (and `input`, JSON): the exact
    document bytes (RFC 8785), its key id and digest. A fresh nonce and time each call."""

    @extend_schema(parameters=[OpenApiParameter("option", str, required=True), OpenApiParameter("input", str)],
                   responses=OpenApiResponse(description="the document to sign"))
    def get(self, request, gate_id):
        gate = selectors.gate_get_for_user(gate_id, request.user)
        option = request.query_params.get("option", "")
        if gate.option(option) is None:
            raise GatehouseError(ErrorCode.GATE_UNKNOWN_OPTION, f"Unknown option {option!r}.")
        try:
            value = json.loads(request.query_params["input"]) if "input" in request.query_params else None
        except ValueError:
            raise GatehouseError(ErrorCode.GATE_INPUT_INVALID, "input must be JSON.") from None
        if not services.may_decide(gate, request.user):
            raise Forbidden(ErrorCode.GATE_NOT_APPROVER, "You are not an approver of this gate.")
        backend = settings.GATEHOUSE_APPROVAL_SIGNING["BACKEND"]
        key = active_key(request.user, backend)
        if key is None and backend == KeyBackend.LOCAL:  # the embedded default enrols on first use (audited)
            key = approver_key_enrol(request.user, actor=request.user, backend=KeyBackend.LOCAL)
        if key is None:
            raise GatehouseError(ErrorCode.SIGNER_UNAVAILABLE, "You have no signing key in use.", status=409)
        document = decision_document(gate_facts(gate), approver_id(request.user), option, value, key.key_id,
                                     new_nonce(), timezone.now())
        raw = document_bytes(document)
        return Response({"document": raw.decode("utf-8"), "key_id": key.key_id,
                         "document_sha256": hashlib.sha256(raw).hexdigest()})


class GateReceiptApi(APIView):
    """A decided gate's receipt: the signed documents, the public keys, the policy and the outcome,
    verifiable offline (`gatehouse approval verify`)."""

    @extend_schema(responses=OpenApiResponse(description="the receipt (JSON)"))
    def get(self, request, gate_id):
        gate = selectors.gate_get_for_user(gate_id, request.user)
        if gate.state == "OPEN":
            raise Conflict(ErrorCode.GATE_NOT_DECIDED, "The gate is not decided yet.")
        audit_append(event="gate.receipt_read", tenant_id=gate.tenant_id, actor=request.user, obj=gate)
        response = Response(receipt_build(gate))
        response["Content-Disposition"] = f'attachment; filename="receipt-{gate.id}.json"'
        return response


class GateAssigneeSerializer(StrictSerializer):
    user_id = serializers.IntegerField()


class GateAssigneeListApi(APIView):
    """Tenant admins assign one member to decide one gate (a per-object grant)."""

    permission_classes = [IsTenantAdmin]

    @extend_schema(responses=OpenApiResponse(description="the members assigned to the gate"))
    def get(self, request, gate_id):
        gate = selectors.gate_get_for_user(gate_id, request.user)
        return Response({"assignees": selectors.gate_assignees(gate)})

    @extend_schema(request=GateAssigneeSerializer, responses={201: OpenApiResponse(description="assigned")})
    def post(self, request, gate_id):
        gate = selectors.gate_get_for_user(gate_id, request.user)
        serializer = GateAssigneeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        member = member_of_tenant(gate.tenant, serializer.validated_data["user_id"])
        services.gate_assign(gate=gate, user=member.user, actor=request.user)
        return Response({"assignees": selectors.gate_assignees(gate)}, status=201)


class GateAssigneeDetailApi(APIView):
    permission_classes = [IsTenantAdmin]

    @extend_schema(responses=OpenApiResponse(description="unassigned"))
    def delete(self, request, gate_id, user_id):
        gate = selectors.gate_get_for_user(gate_id, request.user)
        member = member_of_tenant(gate.tenant, user_id)
        services.gate_unassign(gate=gate, user=member.user, actor=request.user)
        return Response({"assignees": selectors.gate_assignees(gate)})


class GateRelabelSerializer(StrictSerializer):
    classification = serializers.CharField(max_length=1024)


class GateRelabelApi(APIView):
    """Tenant admins raise a gate's label; every decision on the old revision stops counting."""

    permission_classes = [IsTenantAdmin]

    @extend_schema(request=GateRelabelSerializer, responses=GateDetailSerializer)
    def post(self, request, gate_id):
        gate = selectors.gate_get_for_user(gate_id, request.user)
        serializer = GateRelabelSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        gate = services.gate_relabel(gate=gate, classification=serializer.validated_data["classification"],
                                     actor=request.user)
        return Response(GateDetailSerializer(gate).data)
