from rest_framework import serializers

from approvals.models import Decision, Gate
from gateway.api.strict import StrictSerializer


class DecisionSerializer(serializers.ModelSerializer):
    approver = serializers.CharField(source="approver.username", read_only=True)

    class Meta:
        model = Decision
        fields = ["id", "gate_revision", "approver", "option", "outcome", "input_digest", "comment", "created_at",
                  "voided_at", "void_reason"]


class GateSerializer(serializers.ModelSerializer):
    task = serializers.CharField(source="task.key", read_only=True)
    approvals = serializers.SerializerMethodField()

    class Meta:
        model = Gate
        fields = ["id", "run", "task", "title", "instructions", "options", "form", "shows", "approvers",
                  "required_approvals", "approvals", "classification", "state", "revision", "deadline",
                  "on_timeout", "escalated", "opened_at", "decided_at", "outcome_reason"]

    def get_approvals(self, obj) -> int:
        if hasattr(obj, "approvals_given"):  # a list annotated by selectors.gate_list_with_progress
            return obj.approvals_given
        return (obj.decisions.filter(gate_revision=obj.revision, outcome="approve", voided_at__isnull=True)
                .values("approver").distinct().count())


class GateDetailSerializer(GateSerializer):
    decisions = DecisionSerializer(many=True, read_only=True)

    class Meta(GateSerializer.Meta):
        fields = GateSerializer.Meta.fields + ["decisions"]


class GateDecideSerializer(StrictSerializer):
    option = serializers.CharField(max_length=100)
    input = serializers.JSONField(required=False, allow_null=True, default=None)
    comment = serializers.CharField(required=False, default="", allow_blank=True, max_length=5000)
    # A decision the client signed itself (GET .../document shows what to sign): both or neither.
    document = serializers.CharField(required=False, max_length=200_000, trim_whitespace=False)
    signature = serializers.CharField(required=False, max_length=1000)

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if ("document" in attrs) != ("signature" in attrs):
            raise serializers.ValidationError("Send both document and signature, or neither.")
        return attrs
