"""Approvers' signing keys over the API: see mine, rotate mine (the embedded default's server-held
keys; Transit keys rotate in Vault, by its operators), revoke mine or, as a tenant admin, a member's.
Every change is audited by approvals.signing.keys."""
from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from approvals.signing.keys import SigningKeyError, approver_key_enrol, approver_key_revoke, approver_key_rotate
from approvals.signing.models import ApproverKey, KeyBackend
from gateway.api.strict import StrictSerializer
from gateway.choices import Role
from gateway.errors import ErrorCode, Forbidden, GatehouseError, NotFound
from gateway.selectors import membership_for


def _key(key: ApproverKey) -> dict:
    return {"key_id": key.key_id, "user": key.user.get_username(), "approver": key.approver, "algorithm": key.algorithm,
            "backend": key.backend, "created_at": key.created_at, "retired_at": key.retired_at,
            "revoked_at": key.revoked_at, "reason": key.reason,
            "in_use": key.retired_at is None and key.revoked_at is None}


class ReasonSerializer(StrictSerializer):
    reason = serializers.CharField(max_length=500)


class MyKeyListApi(APIView):
    @extend_schema(responses=OpenApiResponse(description="my signing keys, newest first"))
    def get(self, request):
        membership_for(request.user)
        keys = ApproverKey.objects.filter(user=request.user).select_related("user").order_by("-created_at")
        return Response([_key(k) for k in keys])


class MyKeyRotateApi(APIView):
    @extend_schema(request=ReasonSerializer, responses={201: OpenApiResponse(description="the new key")})
    def post(self, request):
        membership_for(request.user)
        serializer = ReasonSerializer(data=request.data or {"reason": "rotation"})
        serializer.is_valid(raise_exception=True)
        if settings.GATEHOUSE_APPROVAL_SIGNING["BACKEND"] != KeyBackend.LOCAL:
            raise GatehouseError(ErrorCode.KEY_OPERATION_REFUSED, "Transit keys are rotated in Vault by its operators.",
                                 status=409)
        try:
            if ApproverKey.objects.filter(user=request.user, backend=KeyBackend.LOCAL, retired_at__isnull=True,
                                          revoked_at__isnull=True).exists():
                key = approver_key_rotate(request.user, actor=request.user, reason=serializer.validated_data["reason"])
            else:
                key = approver_key_enrol(request.user, actor=request.user)
        except SigningKeyError as exc:
            raise GatehouseError(ErrorCode.KEY_OPERATION_REFUSED, str(exc), status=409) from None
        return Response(_key(key), status=201)


class KeyRevokeApi(APIView):
    """Revoke a key: its owner, or a tenant admin of the owner's tenant. Another tenant's key is not found."""

    @extend_schema(request=ReasonSerializer, responses=OpenApiResponse(description="the revoked key"))
    def post(self, request, key_id):
        membership = membership_for(request.user)
        key = ApproverKey.objects.select_related("user__membership").filter(key_id=key_id).first()
        owner = getattr(key.user, "membership", None) if key else None
        mine = key is not None and key.user_id == request.user.pk
        admin = owner is not None and owner.tenant_id == membership.tenant_id and membership.has_role(Role.TENANT_ADMIN)
        if key is None or not (mine or (owner is not None and owner.tenant_id == membership.tenant_id)):
            raise NotFound("No such key.")
        if not (mine or admin):
            raise Forbidden(ErrorCode.PERMISSION_DENIED, "Only the key's owner or a tenant admin may revoke it.")
        serializer = ReasonSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            key = approver_key_revoke(key, actor=request.user, reason=serializer.validated_data["reason"])
        except SigningKeyError as exc:
            raise GatehouseError(ErrorCode.KEY_OPERATION_REFUSED, str(exc), status=409) from None
        return Response(_key(key))
