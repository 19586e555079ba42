"""Export a signed audit bundle from the server side (operators; auditors use the API/CLI)."""
import sys

from django.core.management.base import BaseCommand, CommandError

from audit.export import ExportError, audit_export
from gateway.models import Tenant


class Command(BaseCommand):
    help = "Write a signed audit bundle to an empty directory."

    def add_arguments(self, parser):
        parser.add_argument("--out", required=True)
        parser.add_argument("--tenant", help="tenant slug (default: the global log)")

    def handle(self, *args, out, tenant, **options):
        scope = None
        if tenant:
            scope = Tenant.objects.filter(slug=tenant).first()
            if scope is None:
                raise CommandError(f"no tenant {tenant!r}")

        def progress(done, total):
            filled = int(30 * done / total) if total else 30
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done:,}/{total:,} entries")
            sys.stderr.flush()

        try:
            summary = audit_export(out, tenant=scope, progress=progress)
        except ExportError as exc:
            raise CommandError(f"{exc} [{exc.code}]") from exc
        sys.stderr.write("\n")
        self.stdout.write(f"{summary['entries']} entries [{summary['begin']}, {summary['end']}) of {summary['tree']}, "
                          f"checkpoint {summary['checkpoint_size']}: {summary['path']}")
