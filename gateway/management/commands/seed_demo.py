"""Seed the demo tenant, its users and the demo workflow run (idempotent)."""
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

from executors.backends import backends_configure
from executors.models import BackendConfiguration
from gateway.clearances import ClearanceInput
from gateway.models import Run, Tenant
from gateway.services import run_submit
from gateway.tenancy import member_create, tenant_create

DEMO_USERS = [
    ("analyst", ["analyst"], ["senior-analyst"]),
    ("author", ["author"], []),
    ("admin", ["tenant_admin"], []),
    ("auditor", ["auditor"], []),
]
# Every demo user may read the demo workflow's labels (up to SECRET, releasable to GBR).
DEMO_CLEARANCE = ClearanceInput(policy=None, max_level="SECRET", compartments=[], releasability=["GBR"])
DEMO_WORKFLOW = Path(settings.BASE_DIR) / "deploy" / "examples" / "threat-validation.yaml"
# The demo tenant's backends: this machine, cleared for everything the demo users may read.
DEMO_BACKENDS = """\
apiVersion: gatehouse/v1
kind: Backends
backends:
  - name: local
    kind: local
    max_classification: TOP SECRET
    config: {}
"""


class Command(BaseCommand):
    help = "Create the demo tenant, users (password 'gatehouse') and a run of the demo workflow."

    def add_arguments(self, parser):
        parser.add_argument("--password", default="gatehouse")
        parser.add_argument("--no-run", action="store_true", help="do not submit the demo workflow")

    def handle(self, *args, password, no_run, **options):
        tenant = Tenant.objects.filter(slug="demo").first() or tenant_create(slug="demo", name="Demo Agency")
        User = get_user_model()
        for username, roles, groups in DEMO_USERS:
            user = User.objects.filter(username=username).first()
            if user is None:
                user = member_create(tenant=tenant, username=username, roles=roles, groups=groups, password=password,
                                     clearance=DEMO_CLEARANCE)
            token, _ = Token.objects.get_or_create(user=user)
            self.stdout.write(f"  {username:<8} roles {','.join(roles):<13} token {token.key}")
        if not BackendConfiguration.objects.filter(tenant=tenant).exists():
            backends_configure(tenant=tenant, actor=None, source=DEMO_BACKENDS)
            self.stdout.write("  backends: local (up to TOP SECRET)")
        if not no_run and not Run.objects.filter(tenant=tenant).exists():
            author = User.objects.get(username="author")
            run = run_submit(tenant=tenant, actor=author, source=DEMO_WORKFLOW.read_bytes(), filename=DEMO_WORKFLOW.name)
            self.stdout.write(f"  submitted demo run {run.id} ({run.name})")
