"""Prepare OpenBao/Vault for the backend credential store (idempotent), with an administrator's token.

    VAULT_ADDR=https://vault.example:8200 VAULT_TOKEN=... manage.py credentials_vault_setup --out /etc/gatehouse/vault-approle.env

Writes GATEHOUSE_CREDENTIALS_VAULT_ROLE_ID and _SECRET_ID to --out (mode 0600); the secret id is never printed.
"""
import os

import hvac
import requests
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from executors.credentials import vault_credentials_setup


class Command(BaseCommand):
    help = "Create the KV mount, AppRole mounts, policies and the gateway's AppRole for backend credentials."

    def add_arguments(self, parser):
        parser.add_argument("--out", required=True, help="file to write the gateway's role id and secret id to")

    def handle(self, *args, out, **options):
        url = os.environ.get("VAULT_ADDR") or os.environ.get("BAO_ADDR") or settings.GATEHOUSE_CREDENTIALS["VAULT_URL"]
        token = os.environ.get("VAULT_TOKEN") or os.environ.get("BAO_TOKEN")
        if not url or not token:
            raise CommandError("set VAULT_ADDR (or BAO_ADDR) and an administrator's VAULT_TOKEN (or BAO_TOKEN)")
        session = requests.Session()
        session.trust_env = False
        config = settings.GATEHOUSE_CREDENTIALS
        admin = hvac.Client(url=url, token=token, verify=config["VAULT_VERIFY_TLS"], session=session)
        role_id, secret_id = vault_credentials_setup(
            admin, kv_mount=config["VAULT_KV_MOUNT"], approle_mount=config["VAULT_APPROLE_MOUNT"],
            tenant_approle_mount=config["VAULT_TENANT_APPROLE_MOUNT"], tenant_policy=config["VAULT_TENANT_POLICY"])
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"GATEHOUSE_CREDENTIALS_VAULT_ROLE_ID={role_id}\nGATEHOUSE_CREDENTIALS_VAULT_SECRET_ID={secret_id}\n")
        self.stdout.write(f"Vault prepared at {url}; the gateway's AppRole credentials are in {out}")
