"""Poll the remote backends' jobs once, or in a loop (several pollers may run: each cluster or
queue is polled by one of them per round, under an advisory lock; gateway/remote.py)."""
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from gateway import dbscope
from gateway.remote import remote_poll


class Command(BaseCommand):
    help = "Poll Slurm and AWS Batch jobs of open tasks; send collect messages for finished ones."

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true")
        parser.add_argument("--interval", type=float, default=None,
                            help="seconds between rounds (default GATEHOUSE_REMOTE_POLL_SECONDS)")

    def handle(self, *args, loop, interval, **options):
        interval = settings.GATEHOUSE_ENGINE["REMOTE_POLL_SECONDS"] if interval is None else interval
        while True:
            with dbscope.system_scope():
                counts = remote_poll()
            if any(counts.values()):
                self.stdout.write(" ".join(f"{k}={v}" for k, v in sorted(counts.items())), ending="\n")
                self.stdout.flush()
            if not loop:
                return
            time.sleep(interval)
