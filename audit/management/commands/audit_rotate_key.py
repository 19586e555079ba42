"""Rotate the file key that signs checkpoints; the old key stays listed for verification."""
from django.core.management.base import BaseCommand

from audit.keys import rotate_file_key


class Command(BaseCommand):
    help = "Create a new checkpoint signing key (file signer) and retire the current one."

    def handle(self, *args, **options):
        self.stdout.write(f"new checkpoint key: {rotate_file_key()}")
