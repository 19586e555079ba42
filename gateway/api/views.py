"""REST endpoints for workflows, runs and artefacts. Writes go through the services; reads
through the tenant-scoped selectors."""
from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway import selectors, services
from gateway.permissions import CanSubmit
from gateway.spec import load_schema
from gateway.storage import artefact_content_response

from .parsers import YAML_PARSERS
from .serializers import (
    ArtefactSerializer,
    RunCancelSerializer,
    RunDetailSerializer,
    RunSerializer,
    RunSubmitSerializer,
)


def _submitted_source(request) -> tuple[bytes | str, str]:
    """A workflow arrives as a raw YAML body, a JSON {"source": ...}, or a multipart file."""
    filename = request.query_params.get("filename", "<submitted>")
    if isinstance(request.data, (bytes, str)):
        return request.data, filename
    if request.content_type.split(";")[0].strip() in {p.media_type for p in YAML_PARSERS}:
        return b"", filename  # an empty YAML body: the spec loader says what is wrong with it
    upload = request.FILES.get("file") if hasattr(request, "FILES") else None
    if upload is not None:
        return upload.read(), upload.name
    serializer = RunSubmitSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data["source"], serializer.validated_data["filename"]


class RunListCreateApi(APIView):
    permission_classes = [CanSubmit]
    parser_classes = [*YAML_PARSERS, JSONParser, MultiPartParser]

    @extend_schema(responses=RunSerializer(many=True))
    def get(self, request):
        runs = selectors.run_list_for_user(request.user).order_by("-created_at")
        state = request.query_params.get("state")
        if state:
            runs = runs.filter(state=state.upper())
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(runs, request, view=self)
        return paginator.get_paginated_response(RunSerializer(page, many=True).data)

    @extend_schema(request=RunSubmitSerializer, responses={201: RunDetailSerializer})
    def post(self, request):
        membership = selectors.membership_for(request.user)
        source, filename = _submitted_source(request)
        run = services.run_submit(tenant=membership.tenant, actor=request.user, source=source, filename=filename)
        return Response(RunDetailSerializer(run, context={"user": request.user}).data, status=status.HTTP_201_CREATED)


class RunDetailApi(APIView):
    @extend_schema(responses=RunDetailSerializer)
    def get(self, request, run_id):
        return Response(RunDetailSerializer(selectors.run_get_for_user(run_id, request.user), context={"user": request.user}).data)


class RunCancelApi(APIView):
    permission_classes = [CanSubmit]

    @extend_schema(request=RunCancelSerializer, responses=RunDetailSerializer)
    def post(self, request, run_id):
        run = selectors.run_get_for_user(run_id, request.user)
        serializer = RunCancelSerializer(data=request.data or {})
        serializer.is_valid(raise_exception=True)
        run = services.run_cancel(run=run, actor=request.user, reason=serializer.validated_data["reason"])
        return Response(RunDetailSerializer(run, context={"user": request.user}).data)


class RunArtefactListApi(APIView):
    @extend_schema(responses=ArtefactSerializer(many=True))
    def get(self, request, run_id):
        run = selectors.run_get_for_user(run_id, request.user)
        artefacts = selectors.artefact_list_for_user(request.user).filter(run=run).order_by("created_at")
        return Response(ArtefactSerializer(artefacts, many=True).data)


class ArtefactDetailApi(APIView):
    @extend_schema(responses=ArtefactSerializer)
    def get(self, request, artefact_id):
        return Response(ArtefactSerializer(selectors.artefact_get_for_user(artefact_id, request.user)).data)


class ArtefactContentApi(APIView):
    @extend_schema(responses={(200, "application/octet-stream"): OpenApiResponse(description="The artefact's bytes")})
    def get(self, request, artefact_id):
        artefact = selectors.artefact_get_for_user(artefact_id, request.user)
        return artefact_content_response(artefact, request.user, content_type=artefact.media_type)


class WorkflowValidateApi(APIView):
    parser_classes = [*YAML_PARSERS, JSONParser, MultiPartParser]

    @extend_schema(request=RunSubmitSerializer, responses={200: OpenApiResponse(description="valid")})
    def post(self, request):
        source, filename = _submitted_source(request)
        tenant = selectors.membership_for(request.user).tenant  # its backends are the ones a task may name
        workflow = services.workflow_parse(source, filename=filename, tenant=tenant)
        return Response(
            {
                "valid": True,
                "name": workflow.name,
                "tasks": len(workflow.tasks),
                "gates": sum(1 for t in workflow.tasks if t.kind == "gate"),
                "digest": workflow.digest,
            }
        )


class WorkflowSchemaApi(APIView):
    permission_classes = []
    authentication_classes = []

    @extend_schema(responses={200: OpenApiResponse(description="JSON Schema of workflow files")})
    def get(self, request):
        return Response(load_schema())
