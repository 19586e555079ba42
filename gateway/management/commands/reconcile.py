"""Run the engine's reconciler once, or in a loop (several may run at once)."""
import time

from django.core.management.base import BaseCommand

from gateway.reconcile import reconcile


class Command(BaseCommand):
    help = "Recover lost workers and messages, requeue overdue retries, time out gates."

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true")
        parser.add_argument("--interval", type=float, default=5.0)

    def handle(self, *args, loop, interval, **options):
        while True:
            counts = reconcile()
            if any(counts.values()):
                self.stdout.write(" ".join(f"{k}={v}" for k, v in counts.items()), ending="\n")
                self.stdout.flush()
            if not loop:
                return
            time.sleep(interval)
