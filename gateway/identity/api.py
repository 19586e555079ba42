"""/api/v1/tenant/users: a tenant admin's view of their tenant's users (tenant_admin only)."""
from __future__ import annotations

from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway.permissions import IsTenantAdmin
from gateway.selectors import membership_for

from . import provisioning
from .selectors import member_get_for_user, member_list_for_user

class _NoExtraFields(serializers.Serializer):
    """Refuses fields it does not declare: a `tenant` (or anything else) in the body is an error, not ignored."""

    def validate(self, attrs):
        extra = sorted(set(self.initial_data) - set(self.fields))
        if extra:
            raise serializers.ValidationError({name: "Not an accepted field." for name in extra})
        return attrs


class MemberCreateSerializer(_NoExtraFields):
    username = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,149}$")
    email = serializers.EmailField(required=False, default="")
    roles = serializers.ListField(child=serializers.CharField(max_length=32), allow_empty=True)
    groups = serializers.ListField(child=serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
                                   required=False, default=list)
    password = serializers.CharField(required=False, allow_blank=False, write_only=True, max_length=200,
                                     trim_whitespace=False)


class MemberUpdateSerializer(_NoExtraFields):
    roles = serializers.ListField(child=serializers.CharField(max_length=32), required=False)
    enabled = serializers.BooleanField(required=False)


def member_out(user) -> dict:
    membership = user.membership
    link = getattr(user, "external_identity", None)
    return {"id": user.pk, "username": user.username, "email": user.email, "roles": sorted(membership.roles),
            "groups": sorted(membership.groups), "enabled": user.is_active,
            "subject": link.subject if link else None}


class TenantUserListCreateApi(APIView):
    permission_classes = [IsTenantAdmin]

    def get(self, request):
        return Response([member_out(u) for u in member_list_for_user(request.user)])

    def post(self, request):
        data = MemberCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = provisioning.tenant_user_create(tenant=membership_for(request.user).tenant, actor=request.user,
                                               **data.validated_data)
        return Response(member_out(member_get_for_user(user.pk, request.user)), status=status.HTTP_201_CREATED)


class TenantUserDetailApi(APIView):
    permission_classes = [IsTenantAdmin]

    def get(self, request, user_id: int):
        return Response(member_out(member_get_for_user(user_id, request.user)))

    def patch(self, request, user_id: int):
        member = member_get_for_user(user_id, request.user)
        data = MemberUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = membership_for(request.user).tenant
        if "roles" in data.validated_data:
            provisioning.tenant_user_set_roles(tenant=tenant, actor=request.user, user=member,
                                               roles=data.validated_data["roles"])
        if "enabled" in data.validated_data:
            provisioning.tenant_user_set_enabled(tenant=tenant, actor=request.user, user=member,
                                                 enabled=data.validated_data["enabled"])
        return Response(member_out(member_get_for_user(user_id, request.user)))

