"""Members of the caller's tenant. Another tenant's user is not found (404)."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import QuerySet

from gateway.errors import NotFound
from gateway.selectors import membership_for


def member_list_for_user(user) -> QuerySet:
    tenant_id = membership_for(user).tenant_id
    return (get_user_model().objects.filter(membership__tenant_id=tenant_id)
            .select_related("membership", "external_identity").order_by("username"))


def member_get_for_user(user_id, user):
    member = member_list_for_user(user).filter(pk=user_id).first()
    if member is None:
        raise NotFound("No such user.")
    return member
