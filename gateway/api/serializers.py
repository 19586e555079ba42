from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from gateway.models import Artefact, Run, TaskInstance
from gateway.selectors import task_list_for_run

from .strict import StrictSerializer


class ArtefactSerializer(serializers.ModelSerializer):
    task = serializers.CharField(source="task.key", read_only=True)
    content_url = serializers.SerializerMethodField()

    class Meta:
        model = Artefact
        fields = ["id", "run", "task", "attempt", "name", "digest", "size", "media_type", "classification",
                  "created_at", "content_url"]

    def get_content_url(self, obj) -> str:
        return f"/api/v1/artefacts/{obj.id}/content"


class RemoteJobSerializer(serializers.Serializer):
    """A remote attempt's job as the backend last reported it (gateway/remote.py); never its
    configuration or credentials."""

    backend = serializers.CharField()
    job_id = serializers.CharField(allow_null=True)
    phase = serializers.CharField()
    state = serializers.CharField(allow_null=True)
    reason = serializers.CharField(allow_blank=True)
    submitted_at = serializers.CharField(allow_null=True)


class TaskSerializer(serializers.ModelSerializer):
    needs = serializers.SerializerMethodField()
    remote_job = serializers.SerializerMethodField()

    class Meta:
        model = TaskInstance
        fields = ["key", "kind", "state", "reason", "needs", "backend", "classification", "attempt", "failures",
                  "recoveries", "exit_code", "started_at", "finished_at", "state_changed_at", "remote_job"]

    def get_needs(self, obj) -> list[str]:
        return list(obj.spec.get("needs", []))

    @extend_schema_field(RemoteJobSerializer(allow_null=True))
    def get_remote_job(self, obj) -> dict | None:
        from gateway.remote import is_remote

        external = obj.external
        if not is_remote(external):
            return None
        return {"backend": external.get("backend_name", ""), "job_id": external.get("external_id"),
                "phase": external["phase"], "state": external.get("remote_state"),
                "reason": external.get("remote_reason", ""), "submitted_at": external.get("submitted_at")}


class RunSerializer(serializers.ModelSerializer):
    submitter = serializers.CharField(source="submitter.username", read_only=True)

    class Meta:
        model = Run
        fields = ["id", "name", "state", "reason", "classification", "submitter", "spec_digest", "created_at",
                  "finished_at"]


class RunDetailSerializer(RunSerializer):
    tasks = serializers.SerializerMethodField()
    counts = serializers.SerializerMethodField()

    class Meta(RunSerializer.Meta):
        fields = RunSerializer.Meta.fields + ["counts", "tasks"]

    def _tasks(self, obj):
        # Only the tasks the caller may see: the view passes the caller in the context.
        return task_list_for_run(obj, self.context["user"])

    def get_tasks(self, obj) -> list[dict]:
        return TaskSerializer(self._tasks(obj), many=True).data

    def get_counts(self, obj) -> dict[str, int]:
        counts: dict[str, int] = {}
        for state in self._tasks(obj).values_list("state", flat=True):
            counts[state] = counts.get(state, 0) + 1
        return counts


class RunSubmitSerializer(StrictSerializer):
    source = serializers.CharField(help_text="The workflow YAML.", trim_whitespace=False)
    filename = serializers.CharField(required=False, default="<submitted>")


class RunCancelSerializer(StrictSerializer):
    reason = serializers.CharField(required=False, default="cancelled by user", max_length=500)
