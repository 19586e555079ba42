"""Tenant admins configure their tenant's backends (a YAML document) and write each backend's
credentials. Another tenant's backends are never visible: everything is read through the caller's
own tenant, and a backend name of another tenant is simply not found (404)."""
from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway.api.parsers import YAML_PARSERS
from gateway.api.strict import StrictSerializer
from gateway.labels import LabelError, parse_canonical
from gateway.clearances import label_registry
from gateway.errors import ErrorCode, GatehouseError
from gateway.permissions import IsTenantAdmin
from gateway.selectors import membership_for

from ..backends import backends_configure, backends_document
from ..credentials import CredentialsError, CredentialsUnavailable, credentials_set, credentials_status
from ..models import TenantBackend


class BackendsSourceSerializer(StrictSerializer):
    source = serializers.CharField(max_length=1_000_000, trim_whitespace=False)


class CredentialsWriteSerializer(StrictSerializer):
    """Write-only: the values are stored and never returned."""

    credentials = serializers.DictField(child=serializers.CharField(trim_whitespace=False, allow_blank=False),
                                        allow_empty=False)


def _banner(canonical: str) -> str:
    try:
        return str(parse_canonical(canonical, registry=label_registry()))
    except LabelError:
        return canonical


def _summary(tenant, document) -> dict:
    rows = TenantBackend.objects.filter(tenant=tenant).order_by("name")
    return {
        "revision": document.revision, "digest": document.digest, "updated_at": document.updated_at,
        "backends": [{"name": r.name, "kind": r.kind, "max_classification": _banner(r.max_classification),
                      "tags": r.tags, "capacity": r.capacity, "preference": r.preference, "enabled": r.enabled,
                      "config": r.config} for r in rows],
    }


class TenantBackendsApi(APIView):
    """GET the tenant's backend configuration (YAML, as written); PUT a new one (YAML body, or JSON
    {"source"}): checked against the backends schema, 400 backends_invalid with lines otherwise."""

    permission_classes = [IsTenantAdmin]
    parser_classes = [*YAML_PARSERS, JSONParser]

    @extend_schema(responses={200: OpenApiResponse(description="the configuration, as YAML")})
    def get(self, request):
        tenant = membership_for(request.user).tenant
        text, document = backends_document(tenant)
        response = HttpResponse(text, content_type="application/yaml; charset=utf-8")
        response["X-Gatehouse-Backends-Revision"] = str(document.revision if document else 0)
        return response

    @extend_schema(request=BackendsSourceSerializer, responses={200: OpenApiResponse(description="stored")})
    def put(self, request):
        tenant = membership_for(request.user).tenant
        if isinstance(request.data, (bytes, str)):
            source = request.data
        else:
            serializer = BackendsSourceSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            source = serializer.validated_data["source"]
        document = backends_configure(tenant=tenant, actor=request.user, source=source)
        return Response(_summary(tenant, document))


class BackendCredentialsApi(APIView):
    """PUT a backend's credentials (write-only); GET which keys are set and when, never a value."""

    permission_classes = [IsTenantAdmin]

    @extend_schema(responses={200: OpenApiResponse(description="which keys are set, and when")})
    def get(self, request, name):
        return Response(credentials_status(tenant=membership_for(request.user).tenant, backend=name))

    @extend_schema(request=CredentialsWriteSerializer, responses={200: OpenApiResponse(description="stored")})
    def put(self, request, name):
        tenant = membership_for(request.user).tenant
        serializer = CredentialsWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            credentials_set(tenant=tenant, backend=name, values=dict(serializer.validated_data["credentials"]),
                            actor=request.user)
        except CredentialsUnavailable as exc:
            raise GatehouseError(ErrorCode.CREDENTIALS_UNAVAILABLE, f"{exc.message}; nothing was stored, try again.",
                                 status=503) from None
        except CredentialsError as exc:
            raise GatehouseError(exc.code, f"The credential store refused the write: {exc.message}",
                                 status=502) from None
        return Response(credentials_status(tenant=tenant, backend=name))
