#!/usr/bin/env python
"""Django's command-line utility for server-side maintenance."""
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")
    # Maintenance (reconcile, audit_sequencer, seed_demo, audit_export, shell) works across tenants:
    # the "system" database scope (gateway/dbscope.py). runserver is a web server: "request".
    os.environ.setdefault("GATEHOUSE_DB_SCOPE", "request" if sys.argv[1:2] == ["runserver"] else "system")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
