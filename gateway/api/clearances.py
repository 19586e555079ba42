"""Tenant admins manage their tenant's clearances. Each change is audited (what it was and what it
is) and counts from the member's next request."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway.api.strict import StrictSerializer
from gateway.clearances import ClearanceInput, clearance_revoke, clearance_set, member_of_tenant
from gateway.errors import NotFound
from gateway.models import Clearance, ClearanceStatus
from gateway.permissions import IsTenantAdmin
from gateway.selectors import membership_for


class ClearanceSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username", read_only=True)
    user_id = serializers.IntegerField(read_only=True)
    updated_by = serializers.CharField(source="updated_by.username", read_only=True, default=None)

    class Meta:
        model = Clearance
        fields = ["id", "user", "user_id", "policy", "max_level", "compartments", "releasability", "valid_from",
                  "valid_until", "status", "revision", "updated_at", "updated_by"]


class ClearanceWriteSerializer(StrictSerializer):
    """Only these fields are read; anything else in the body (tenant, revision, updated_by...) is refused."""

    user_id = serializers.IntegerField()
    policy = serializers.CharField(required=False, allow_null=True, default=None, max_length=64)
    max_level = serializers.CharField(max_length=64)
    compartments = serializers.ListField(child=serializers.CharField(max_length=64), default=list, max_length=256)
    releasability = serializers.ListField(child=serializers.CharField(max_length=64), default=list, max_length=256)
    valid_from = serializers.DateTimeField(required=False, allow_null=True, default=None)
    valid_until = serializers.DateTimeField(required=False, allow_null=True, default=None)
    status = serializers.ChoiceField(choices=ClearanceStatus.choices, default=ClearanceStatus.ACTIVE)


def _clearances(request):
    return Clearance.objects.filter(tenant_id=membership_for(request.user).tenant_id).select_related("user", "updated_by")


class ClearanceListApi(APIView):
    permission_classes = [IsTenantAdmin]

    @extend_schema(responses=ClearanceSerializer(many=True))
    def get(self, request):
        rows = _clearances(request).order_by("user__username", "policy")
        if user := request.query_params.get("user"):
            rows = rows.filter(user__username=user)
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(ClearanceSerializer(page, many=True).data)

    @extend_schema(request=ClearanceWriteSerializer, responses={200: ClearanceSerializer, 201: ClearanceSerializer})
    def post(self, request):
        serializer = ClearanceWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        tenant = membership_for(request.user).tenant
        member = member_of_tenant(tenant, data.pop("user_id"))
        existed = Clearance.objects.filter(tenant=tenant, user=member.user).exists()
        row = clearance_set(tenant=tenant, user=member.user, data=ClearanceInput(**data), actor=request.user)
        return Response(ClearanceSerializer(row).data, status=status.HTTP_200_OK if existed else status.HTTP_201_CREATED)


class ClearanceDetailApi(APIView):
    permission_classes = [IsTenantAdmin]

    def _get(self, request, clearance_id) -> Clearance:
        row = _clearances(request).filter(id=clearance_id).first()
        if row is None:
            raise NotFound("No such clearance.")
        return row

    @extend_schema(responses=ClearanceSerializer)
    def get(self, request, clearance_id):
        return Response(ClearanceSerializer(self._get(request, clearance_id)).data)

    @extend_schema(responses=ClearanceSerializer)
    def delete(self, request, clearance_id):
        """Revoke (the row stays, with its history in the audit log)."""
        row = clearance_revoke(tenant=membership_for(request.user).tenant, clearance=self._get(request, clearance_id),
                               actor=request.user)
        return Response(ClearanceSerializer(row).data)
