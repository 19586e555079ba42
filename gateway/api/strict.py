"""Write bodies accept only their declared fields. DRF ignores unknown fields by default, which lets
a client believe it set a tenant, owner, label or approver; here such a body is refused (400,
code `invalid`, the offending fields named) and nothing is written."""
from __future__ import annotations

from rest_framework import serializers


class StrictSerializer(serializers.Serializer):
    def validate(self, attrs):
        attrs = super().validate(attrs)
        if isinstance(self.initial_data, dict):
            unknown = set(self.initial_data) - set(self.fields)
            if unknown:
                raise serializers.ValidationError({name: "This field cannot be set." for name in sorted(unknown)})
        return attrs
