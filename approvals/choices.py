from django.db import models


class GateState(models.TextChoices):
    OPEN = "OPEN"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"


class OnTimeout(models.TextChoices):
    REJECT = "reject"
    EXPIRE = "expire"
    ESCALATE = "escalate"


class Outcome(models.TextChoices):
    APPROVE = "approve"
    REJECT = "reject"
