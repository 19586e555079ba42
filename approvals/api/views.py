"""REST endpoints for gates: list those awaiting me, show one, decide."""
from __future__ import annotations

import json

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from approvals import selectors, services
from audit.services import audit_append
from gateway.api.strict import StrictSerializer
from gateway.clearances import member_of_tenant
from gateway.errors import ErrorCode, GatehouseError
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
        decision = services.gate_decide(
            gate=gate, actor=request.user, option=data["option"], input_value=data["input"], comment=data["comment"]
        )
        return Response(DecisionSerializer(decision).data, status=201)


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
