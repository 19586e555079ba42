"""Place committed audit entries in the log and sign checkpoints, once or in a loop."""
import signal
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from audit.sequencer import integrate


class Command(BaseCommand):
    help = "Run the audit log's sequencer (one at a time is enough; a second one waits for the first)."

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true")
        parser.add_argument("--interval", type=float, default=None)

    def handle(self, *args, loop, interval, **options):
        interval = interval if interval is not None else settings.GATEHOUSE_AUDIT["SEQUENCER_INTERVAL"]
        stopping = []
        signal.signal(signal.SIGTERM, lambda *a: stopping.append(True))
        batch = min(settings.GATEHOUSE_AUDIT["SEQUENCER_BATCH"], settings.GATEHOUSE_AUDIT["CHECKPOINT_ENTRIES"])
        while True:
            close_old_connections()
            # Drain a backlog without waiting, but sleep after a partial batch: under steady load
            # that lets entries gather into larger batches (less work per entry) while the window
            # stays within one interval.
            while integrate() >= batch:
                pass
            if not loop or stopping:
                return
            time.sleep(interval)
