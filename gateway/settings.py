"""All settings, read once from the environment with typed defaults.

Profiles (GATEHOUSE_PROFILE):
  dev         the embedded default: SQLite, filesystem broker, local executor, files for artefacts
  test        what `make test` uses: PostgreSQL and Redis (URLs from the environment)
  production  refuses to start with DEBUG on or without a secret key
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

PROFILE = env.str("GATEHOUSE_PROFILE", default="dev")
if PROFILE not in {"dev", "test", "production"}:
    raise ImproperlyConfigured(f"GATEHOUSE_PROFILE must be dev, test or production, not {PROFILE!r}")

VAR_DIR = Path(env.str("GATEHOUSE_VAR_DIR", default=str(BASE_DIR / "var")))

DEBUG = env.bool("GATEHOUSE_DEBUG", default=PROFILE != "production")
SECRET_KEY = env.str("GATEHOUSE_SECRET_KEY", default="")
if PROFILE == "production":
    if DEBUG:
        raise ImproperlyConfigured("production refuses to start with GATEHOUSE_DEBUG on")
    if len(SECRET_KEY) < 32:
        raise ImproperlyConfigured("production needs GATEHOUSE_SECRET_KEY (at least 32 characters)")
elif not SECRET_KEY:
    SECRET_KEY = "dev-insecure-" + "x" * 40  # never used outside dev/test

ALLOWED_HOSTS = env.list("GATEHOUSE_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "guardian",
    "channels",
    "gateway",
    "gateway.identity",
    "approvals",
    "audit",
    "executors",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "gateway.portal.headers.SecurityHeadersMiddleware",  # Content-Security-Policy, Cache-Control: no-store
    "audit.context.AuditContextMiddleware",  # first: every later refusal is recorded with its request
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "gateway.identity.middleware.OidcSessionMiddleware",  # oidc mode: Keycloak's word on each portal session
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "gateway.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ASGI_APPLICATION = "gateway.asgi.application"
WSGI_APPLICATION = "gateway.wsgi.application"

# Database: SQLite by default (embedded), PostgreSQL for tests and production.
DATABASES = {
    "default": env.db_url(
        "GATEHOUSE_DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'gatehouse.sqlite3'}"
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Several processes (server, worker) share the file: wait for locks instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 30, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("GATEHOUSE_DB_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("TEST", {})["NAME"] = env.str(
        "GATEHOUSE_TEST_DATABASE", default="test_gatehouse"
    )
    if PROFILE == "test" and env.bool("GATEHOUSE_DB_ALLOW_AUDIT_PURGE", default=False):
        # Lets the suite's flush (TRUNCATE, as the owner) past the audit log's append-only triggers.
        # The application role is refused by privileges whatever this says (audit/db_privileges.py).
        DATABASES["default"].setdefault("OPTIONS", {})["options"] = "-c gatehouse.audit_purge=on"
# The role the application runs as: INSERT and SELECT only on the audit log (audit/db_privileges.py).
GATEHOUSE_DB_APP_ROLE = env.str("GATEHOUSE_DB_APP_ROLE", default="gatehouse_app")
# What this process's connections may see under row-level security (gateway/dbscope.py, gateway/rls.py):
# "request" (web server: nothing until the caller's tenant is bound) or "system" (workers, reconciler,
# audit sequencer, management commands: every tenant). The default fails closed.
GATEHOUSE_DB_SCOPE = env.str("GATEHOUSE_DB_SCOPE", default="request")
if GATEHOUSE_DB_SCOPE not in {"request", "system"}:
    raise ImproperlyConfigured(f"GATEHOUSE_DB_SCOPE must be request or system, not {GATEHOUSE_DB_SCOPE!r}")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
if PROFILE == "test":
    # Production-strength PBKDF2 costs ~0.3 s a user and the suite makes hundreds of users.
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = PROFILE == "production"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True  # with the CSP and no-store of gateway/portal/headers.py
SECURE_REFERRER_POLICY = "same-origin"
CSRF_FAILURE_VIEW = "gateway.portal.csrf_failure"  # refused and audited

# Identity. MODE "oidc": Keycloak (bearer tokens on the API, OpenID Connect login on the portal, users
# provisioned through its Admin API). MODE "dev": the built-in password login and API tokens, which answer
# only with DEBUG on or under the test profile. See gateway/identity/.
_auth_mode = env.str("GATEHOUSE_AUTH_MODE", default="dev")
if _auth_mode not in {"dev", "oidc"}:
    raise ImproperlyConfigured(f"GATEHOUSE_AUTH_MODE must be dev or oidc, not {_auth_mode!r}")
_auth_leeway = env.int("GATEHOUSE_AUTH_LEEWAY", default=30)
if not 0 <= _auth_leeway <= 30:
    raise ImproperlyConfigured("GATEHOUSE_AUTH_LEEWAY must be between 0 and 30 seconds")
GATEHOUSE_AUTH = {
    "MODE": _auth_mode,
    "SERVER_URL": env.str("GATEHOUSE_KEYCLOAK_URL", default=""),  # e.g. https://id.example.org
    "REALM": env.str("GATEHOUSE_KEYCLOAK_REALM", default="gatehouse"),
    "ISSUER": env.str("GATEHOUSE_KEYCLOAK_ISSUER", default=""),  # empty: SERVER_URL/realms/REALM
    "CLIENT_ID": env.str("GATEHOUSE_KEYCLOAK_CLIENT_ID", default="gatehouse"),
    "CLIENT_SECRET": env.str("GATEHOUSE_KEYCLOAK_CLIENT_SECRET", default=""),
    # A public client for the command line (`gatehouse login`, device flow) whose tokens the API accepts
    # too; Keycloak must put CLIENT_ID in their audience (an Audience mapper). Empty: none.
    "CLI_CLIENT_ID": env.str("GATEHOUSE_KEYCLOAK_CLI_CLIENT_ID", default=""),
    # Admin API credentials (provisioning): a service account (client credentials) by default, the
    # client above unless set; or a user of ADMIN_REALM with ADMIN_USERNAME/ADMIN_PASSWORD.
    "ADMIN_REALM": env.str("GATEHOUSE_KEYCLOAK_ADMIN_REALM", default=""),
    "ADMIN_CLIENT_ID": env.str("GATEHOUSE_KEYCLOAK_ADMIN_CLIENT_ID", default=""),
    "ADMIN_CLIENT_SECRET": env.str("GATEHOUSE_KEYCLOAK_ADMIN_CLIENT_SECRET", default=""),
    "ADMIN_USERNAME": env.str("GATEHOUSE_KEYCLOAK_ADMIN_USERNAME", default=""),
    "ADMIN_PASSWORD": env.str("GATEHOUSE_KEYCLOAK_ADMIN_PASSWORD", default=""),
    "LEEWAY": _auth_leeway,  # seconds of clock skew allowed on exp/nbf (at most 30)
    # A user's tenant: the group TENANT_GROUP_PREFIX<slug> (subgroups below it are approver groups),
    # or, when TENANT_CLAIM is set, that claim of the token.
    "TENANT_GROUP_PREFIX": env.str("GATEHOUSE_AUTH_TENANT_GROUP_PREFIX", default="/tenants/"),
    "TENANT_CLAIM": env.str("GATEHOUSE_AUTH_TENANT_CLAIM", default=""),
    # Keycloak roles -> Gatehouse roles, "realm:<name>=<role>,client:<name>=<role>" (client roles of
    # CLIENT_ID). Empty: realm and client roles named like a Gatehouse role map to it.
    "ROLE_MAP": env.str("GATEHOUSE_AUTH_ROLE_MAP", default=""),
    # How long an introspection answer is reused; 0 asks Keycloak on every request (see gateway/identity/tokens.py).
    "INTROSPECTION_CACHE_SECONDS": env.int("GATEHOUSE_AUTH_INTROSPECTION_CACHE_SECONDS", default=0),
    # The realm's keys are cached; an unknown key id refetches them at most this often.
    "JWKS_MIN_REFRESH_SECONDS": env.int("GATEHOUSE_AUTH_JWKS_MIN_REFRESH_SECONDS", default=10),
    "JWKS_CACHE_SECONDS": env.int("GATEHOUSE_AUTH_JWKS_CACHE_SECONDS", default=3600),
    "TIMEOUT": env.int("GATEHOUSE_KEYCLOAK_TIMEOUT", default=10),
    "VERIFY_TLS": env.bool("GATEHOUSE_KEYCLOAK_VERIFY_TLS", default=True),
}
if PROFILE == "production":
    if _auth_mode != "oidc":
        raise ImproperlyConfigured("production refuses to start with GATEHOUSE_AUTH_MODE dev (set it to oidc)")
    if not (GATEHOUSE_AUTH["SERVER_URL"] and GATEHOUSE_AUTH["CLIENT_SECRET"]):
        raise ImproperlyConfigured("production needs GATEHOUSE_KEYCLOAK_URL and GATEHOUSE_KEYCLOAK_CLIENT_SECRET")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Keycloak bearer tokens when GATEHOUSE_AUTH["MODE"] is oidc, the dev login's API tokens when dev.
        "gateway.identity.authentication.GatehouseAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["gateway.permissions.IsTenantMember"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "gateway.errors.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Gatehouse API",
    "DESCRIPTION": "Submit DAG workflows, follow runs, decide human gates.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

# Celery. The embedded default uses kombu's filesystem transport: no server needed.
_broker_dir = VAR_DIR / "broker"
CELERY_BROKER_URL = env.str("GATEHOUSE_BROKER_URL", default="filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("in", "processed", "control"):
        os.makedirs(_broker_dir / sub, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "in"),
        "data_folder_out": str(_broker_dir / "in"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),  # kombu's default is ./control, wherever the process runs
        "store_processed": False,
        "polling_interval": 0.05,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # A message whose worker died is redelivered after this long; the engine's reconciler
        # recovers the task well before, and the redelivered message is then a no-op.
        "visibility_timeout": env.int("GATEHOUSE_BROKER_VISIBILITY_TIMEOUT", default=3600),
    }
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env.int("GATEHOUSE_WORKER_PREFETCH", default=4)
CELERY_TASK_DEFAULT_QUEUE = env.str("GATEHOUSE_QUEUE", default="gatehouse")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fixup closes the database connection around every task unless reuse is set;
# a new PostgreSQL connection per task cost more than the task's own queries. Stale or broken
# connections are still dropped: gateway.celery runs close_old_connections around each task,
# which honours CONN_MAX_AGE and CONN_HEALTH_CHECKS.
CELERY_DB_REUSE_MAX = env.int("GATEHOUSE_WORKER_DB_REUSE_MAX", default=1000)

# Live updates (gateway/realtime/). channels-redis when GATEHOUSE_CHANNEL_LAYER_URL is set, or when the
# broker is Redis (the same server); its pub/sub layer: one PUBLISH per message, fanned out to the sockets
# inside each server process. Without Redis (the embedded default), Channels' in-memory layer, which
# reaches only the sockets of its own process; the other processes publish through a relay on the
# filesystem that the ASGI process drains (gateway/realtime/relay.py), so run ONE ASGI process then.
_channel_url = env.str("GATEHOUSE_CHANNEL_LAYER_URL", default="") or (
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else "")
# Redis pub/sub channels ignore the database number: the prefix carries it, so that deployments (or test
# runs) on different databases of one Redis server never hear each other.
_channel_db = (urlsplit(_channel_url).path.strip("/") or "0") if _channel_url else ""
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [_channel_url],
                   "prefix": env.str("GATEHOUSE_CHANNEL_LAYER_PREFIX", default=f"gatehouse-db{_channel_db}")},
    } if _channel_url else {"BACKEND": "channels.layers.InMemoryChannelLayer"}
}
GATEHOUSE_LIVE = {
    # Each message's send to the layer, at most (the sender thread's, never a transaction's).
    "PUBLISH_TIMEOUT_SECONDS": env.float("GATEHOUSE_LIVE_PUBLISH_TIMEOUT_SECONDS", default=0.5),
    # After a failed send, messages are dropped (not queued) for this long.
    "BACKOFF_SECONDS": env.float("GATEHOUSE_LIVE_BACKOFF_SECONDS", default=5.0),
    "QUEUE_MAX_BATCHES": env.int("GATEHOUSE_LIVE_QUEUE_MAX_BATCHES", default=10_000),
    # A socket re-checks its session and groups at least this often (±20 %); changes made through the
    # services (clearances, roles, accounts, logouts) reach it at once anyway.
    "RECHECK_SECONDS": env.float("GATEHOUSE_LIVE_RECHECK_SECONDS", default=300.0),
    "RELAY_DIR": env.str("GATEHOUSE_LIVE_RELAY_DIR", default=str(VAR_DIR / "live-relay")),
    "RELAY_POLL_SECONDS": env.float("GATEHOUSE_LIVE_RELAY_POLL_SECONDS", default=0.05),
    "RELAY_MAX_AGE_SECONDS": env.float("GATEHOUSE_LIVE_RELAY_MAX_AGE_SECONDS", default=30.0),
}

# Artefacts: files on disk by default; S3 when a bucket is configured.
_s3_bucket = env.str("GATEHOUSE_ARTEFACT_S3_BUCKET", default="")
GATEHOUSE_ARTEFACT_STORE = (
    {
        "backend": "s3",
        "bucket": _s3_bucket,
        "prefix": env.str("GATEHOUSE_ARTEFACT_S3_PREFIX", default=""),
        "endpoint_url": env.str("GATEHOUSE_ARTEFACT_S3_ENDPOINT", default="") or None,
        "region_name": env.str("GATEHOUSE_ARTEFACT_S3_REGION", default="") or None,
    }
    if _s3_bucket
    else {"backend": "file", "root": env.str("GATEHOUSE_ARTEFACT_ROOT", default=str(VAR_DIR / "artefacts"))}
)

# The engine.
GATEHOUSE_ENGINE = {
    # Where task work directories are created (local executor).
    "WORKDIR_ROOT": env.str("GATEHOUSE_WORKDIR_ROOT", default=str(VAR_DIR / "work")),
    "KEEP_WORKDIRS": env.bool("GATEHOUSE_KEEP_WORKDIRS", default=False),
    # A running task's worker renews its lease every HEARTBEAT seconds; a lease older than
    # LEASE seconds means the worker died, and the reconciler starts a new attempt.
    "HEARTBEAT_SECONDS": env.float("GATEHOUSE_HEARTBEAT_SECONDS", default=2.0),
    "LEASE_SECONDS": env.float("GATEHOUSE_LEASE_SECONDS", default=30.0),
    # A task queued this long without being claimed is taken as a lost broker message.
    "DISPATCH_TIMEOUT_SECONDS": env.float("GATEHOUSE_DISPATCH_TIMEOUT_SECONDS", default=300.0),
    # Of the tasks readied together (a fan-out), at most DISPATCH_WINDOW get a message; the rest are
    # held, and the worker that runs a sent one then claims held ones of the same run for up to
    # DRAIN_SECONDS, when it hands on with a message (gateway/worker.py); a message taken is replaced
    # by a held task's, so the run keeps DISPATCH_WINDOW messages queued. 0 sends every task a message
    # and no worker drains (tasks held before are sent by the reconciler after DISPATCH_TIMEOUT).
    "DISPATCH_WINDOW": env.int("GATEHOUSE_DISPATCH_WINDOW", default=32),
    "DRAIN_SECONDS": env.float("GATEHOUSE_DRAIN_SECONDS", default=2.0),
    "RECONCILE_INTERVAL_SECONDS": env.float("GATEHOUSE_RECONCILE_INTERVAL_SECONDS", default=5.0),
    # How many times a task is restarted after its worker was lost before it fails.
    "MAX_RECOVERIES": env.int("GATEHOUSE_MAX_RECOVERIES", default=3),
    # gateway.dispatch.CeleryDispatcher or gateway.dispatch.RecordingDispatcher (tests).
    "DISPATCHER": env.str("GATEHOUSE_DISPATCHER", default="gateway.dispatch.CeleryDispatcher"),
    # Remote jobs (slurm, batch; gateway/remote.py): the poller's round, how long a job may stay UNKNOWN
    # before it is confirmed or LOST, how long a submission may take before recovery looks for its job,
    # and the back-off while a backend's credentials cannot be read (first wait, longest wait).
    "REMOTE_POLL_SECONDS": env.float("GATEHOUSE_REMOTE_POLL_SECONDS", default=5.0),
    "REMOTE_UNKNOWN_SECONDS": env.float("GATEHOUSE_REMOTE_UNKNOWN_SECONDS", default=600.0),
    "REMOTE_SUBMIT_GRACE_SECONDS": env.float("GATEHOUSE_REMOTE_SUBMIT_GRACE_SECONDS", default=60.0),
    "CREDENTIALS_RETRY_SECONDS": env.float("GATEHOUSE_CREDENTIALS_RETRY_SECONDS", default=5.0),
    "CREDENTIALS_RETRY_MAX_SECONDS": env.float("GATEHOUSE_CREDENTIALS_RETRY_MAX_SECONDS", default=300.0),
}

# Limits on workflow files (hostile input is refused before it costs memory or time).
GATEHOUSE_SPEC_LIMITS = {
    "max_bytes": env.int("GATEHOUSE_SPEC_MAX_BYTES", default=2_000_000),
    "max_tasks": env.int("GATEHOUSE_SPEC_MAX_TASKS", default=5_000),
    "max_depth": env.int("GATEHOUSE_SPEC_MAX_DEPTH", default=40),
    "max_nodes": env.int("GATEHOUSE_SPEC_MAX_NODES", default=500_000),
    "max_scalar_len": env.int("GATEHOUSE_SPEC_MAX_SCALAR_LEN", default=200_000),
    # foreach/matrix: instances per fan-out task, and dependencies between instances.
    "max_fanout": env.int("GATEHOUSE_SPEC_MAX_FANOUT", default=1_000),
    "max_edges": env.int("GATEHOUSE_SPEC_MAX_EDGES", default=500_000),
}
# Largest analyst form input accepted with a decision.
# Classification policies (gateway/labels.py): a JSON file of {"default": NAME, "policies": [...]};
# without one, the built-in policy GH (UNCLASSIFIED < RESTRICTED < CONFIDENTIAL < SECRET < TOP SECRET).
GATEHOUSE_LABEL_POLICIES_FILE = env.str("GATEHOUSE_LABEL_POLICIES_FILE", default="")
GATEHOUSE_MAX_DECISION_INPUT_BYTES = env.int("GATEHOUSE_MAX_DECISION_INPUT_BYTES", default=1_000_000)
DATA_UPLOAD_MAX_MEMORY_SIZE = GATEHOUSE_SPEC_LIMITS["max_bytes"] + 65536

# The audit log.
_hmac_key = env.str("GATEHOUSE_AUDIT_HMAC_KEY", default="")
if PROFILE == "production" and len(_hmac_key) < 32:
    raise ImproperlyConfigured("production needs GATEHOUSE_AUDIT_HMAC_KEY (at least 32 characters)")
# Secrets in audit entries are stored as HMACs under this key (never in clear).
GATEHOUSE_AUDIT_HMAC_KEY = (_hmac_key or "audit-hmac:" + SECRET_KEY).encode("utf-8")
GATEHOUSE_AUDIT = {
    # The log's name in every checkpoint (C2SP checkpoint origin line).
    "ORIGIN": env.str("GATEHOUSE_AUDIT_ORIGIN", default="gatehouse.local/audit"),
    # "file": an Ed25519 key in KEY_FILE (created on first use outside production);
    # "vault": OpenBao/Vault Transit key VAULT_KEY, reached with AppRole VAULT_ROLE_ID/VAULT_SECRET_ID.
    "SIGNER": env.str("GATEHOUSE_AUDIT_SIGNER", default="file"),
    "KEY_FILE": env.str("GATEHOUSE_AUDIT_KEY_FILE", default=str(VAR_DIR / "keys" / "audit-log.key")),
    "KEY_NAME": env.str("GATEHOUSE_AUDIT_KEY_NAME", default="gatehouse-audit"),
    "VAULT_URL": env.str("GATEHOUSE_VAULT_URL", default=""),
    "VAULT_ROLE_ID": env.str("GATEHOUSE_VAULT_ROLE_ID", default=""),
    "VAULT_SECRET_ID": env.str("GATEHOUSE_VAULT_SECRET_ID", default=""),
    "VAULT_KEY": env.str("GATEHOUSE_AUDIT_VAULT_KEY", default="gatehouse-audit"),
    "VAULT_MOUNT": env.str("GATEHOUSE_AUDIT_VAULT_MOUNT", default="transit"),
    # A checkpoint is signed every CHECKPOINT_ENTRIES entries or CHECKPOINT_SECONDS seconds.
    "CHECKPOINT_ENTRIES": env.int("GATEHOUSE_AUDIT_CHECKPOINT_ENTRIES", default=1000),
    "CHECKPOINT_SECONDS": env.float("GATEHOUSE_AUDIT_CHECKPOINT_SECONDS", default=10.0),
    # Checkpoints are also written here, outside the database (a directory, or s3://bucket/prefix).
    "CHECKPOINT_STORE": env.str("GATEHOUSE_AUDIT_CHECKPOINT_STORE", default=str(VAR_DIR / "audit-checkpoints")),
    # The sequencer places committed entries in the log at least this often (seconds).
    "SEQUENCER_INTERVAL": env.float("GATEHOUSE_AUDIT_SEQUENCER_INTERVAL", default=0.2),
    "SEQUENCER_BATCH": env.int("GATEHOUSE_AUDIT_SEQUENCER_BATCH", default=5000),
    # An entry placed longer than this after its action is reported by the verifier as backdated.
    "MAX_INTEGRATION_LAG_SECONDS": env.int("GATEHOUSE_AUDIT_MAX_INTEGRATION_LAG_SECONDS", default=3600),
    # Export jobs (audit/export_jobs.py): a RUNNING job with no sign of life for this long is given up
    # and queued again, at most EXPORT_MAX_ATTEMPTS attempts in all; a QUEUED job's message is sent
    # again after EXPORT_RESEND_SECONDS (a lost message; a repeated one is a no-op).
    "EXPORT_STALE_SECONDS": env.float("GATEHOUSE_AUDIT_EXPORT_STALE_SECONDS", default=900.0),
    "EXPORT_MAX_ATTEMPTS": env.int("GATEHOUSE_AUDIT_EXPORT_MAX_ATTEMPTS", default=3),
    "EXPORT_RESEND_SECONDS": env.float("GATEHOUSE_AUDIT_EXPORT_RESEND_SECONDS", default=120.0),
    # A finished export's bundle is deleted this long after it was written (the job stays, EXPIRED,
    # audited); 0 keeps bundles until someone deletes them.
    "EXPORT_RETENTION_SECONDS": env.float("GATEHOUSE_AUDIT_EXPORT_RETENTION_SECONDS", default=7 * 86400.0),
}

# Signatures on gate decisions (approvals/signing/).
GATEHOUSE_APPROVAL_SIGNING = {
    # "local": per-approver Ed25519 keys on the server, sealed under MASTER_KEY_FILE (created on first
    # use outside production); "transit": OpenBao/Vault Transit, one key per approver named after their
    # identity provider subject, signed with a Vault token issued to the approver from their access token.
    "BACKEND": env.str("GATEHOUSE_APPROVAL_SIGNER", default="local"),
    "MASTER_KEY_FILE": env.str("GATEHOUSE_APPROVAL_MASTER_KEY_FILE", default=str(VAR_DIR / "keys" / "approval-master.key")),
    "VAULT_URL": env.str("GATEHOUSE_APPROVAL_VAULT_URL", default="") or env.str("GATEHOUSE_VAULT_URL", default=""),
    "VAULT_JWT_MOUNT": env.str("GATEHOUSE_APPROVAL_VAULT_JWT_MOUNT", default="jwt"),
    "VAULT_JWT_ROLE": env.str("GATEHOUSE_APPROVAL_VAULT_JWT_ROLE", default="gatehouse-approver"),
    "VAULT_TRANSIT_MOUNT": env.str("GATEHOUSE_APPROVAL_VAULT_TRANSIT_MOUNT", default="transit"),
    "VAULT_VERIFY_TLS": env.bool("GATEHOUSE_APPROVAL_VAULT_VERIFY_TLS", default=True),
}

# Compute backends per tenant (executors/models.py) and where a task may run (gateway/placement.py).
# A tenant without a backend configuration has the built-in `local` backend, capped at this level.
GATEHOUSE_BACKEND_DEFAULT_CEILING = env.str("GATEHOUSE_BACKEND_DEFAULT_CEILING", default="TOP SECRET")
GATEHOUSE_BACKENDS_MAX_BYTES = env.int("GATEHOUSE_BACKENDS_MAX_BYTES", default=200_000)

# Backend credentials (executors/credentials.py): never in the database, logs or artefacts.
GATEHOUSE_CREDENTIALS = {
    # "local": files under LOCAL_DIR sealed with AES-256-GCM under MASTER_KEY_FILE (created on first use
    # outside production); "vault": OpenBao/Vault KV v2 at <KV_MOUNT>/data/tenants/<slug>/backends/<name>,
    # read with a token of the tenant's own AppRole (TENANT_APPROLE_MOUNT, role = tenant slug), whose
    # templated policy opens that tenant's path only. The gateway's AppRole (ROLE_ID/SECRET_ID) may
    # only manage those roles and issue their secret ids; it reads no secret itself.
    "STORE": env.str("GATEHOUSE_CREDENTIALS_STORE", default="local"),
    "CACHE_SECONDS": env.float("GATEHOUSE_CREDENTIALS_CACHE_SECONDS", default=30.0),
    "LOCAL_DIR": env.str("GATEHOUSE_CREDENTIALS_LOCAL_DIR", default=str(VAR_DIR / "credentials")),
    "MASTER_KEY_FILE": env.str("GATEHOUSE_CREDENTIALS_MASTER_KEY_FILE",
                               default=str(VAR_DIR / "keys" / "credentials-master.key")),
    "VAULT_URL": env.str("GATEHOUSE_CREDENTIALS_VAULT_URL", default="") or env.str("GATEHOUSE_VAULT_URL", default=""),
    "VAULT_ROLE_ID": env.str("GATEHOUSE_CREDENTIALS_VAULT_ROLE_ID", default=""),
    "VAULT_SECRET_ID": env.str("GATEHOUSE_CREDENTIALS_VAULT_SECRET_ID", default=""),
    "VAULT_APPROLE_MOUNT": env.str("GATEHOUSE_CREDENTIALS_VAULT_APPROLE_MOUNT", default="approle"),
    "VAULT_TENANT_APPROLE_MOUNT": env.str("GATEHOUSE_CREDENTIALS_VAULT_TENANT_APPROLE_MOUNT",
                                          default="gatehouse-tenants"),
    "VAULT_TENANT_POLICY": env.str("GATEHOUSE_CREDENTIALS_VAULT_TENANT_POLICY", default="gatehouse-tenant-credentials"),
    "VAULT_TENANT_TOKEN_TTL": env.int("GATEHOUSE_CREDENTIALS_VAULT_TENANT_TOKEN_TTL", default=900),
    "VAULT_KV_MOUNT": env.str("GATEHOUSE_CREDENTIALS_VAULT_KV_MOUNT", default="gatehouse"),
    "VAULT_VERIFY_TLS": env.bool("GATEHOUSE_CREDENTIALS_VAULT_VERIFY_TLS", default=True),
    "VAULT_TIMEOUT": env.float("GATEHOUSE_CREDENTIALS_VAULT_TIMEOUT", default=5.0),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("GATEHOUSE_LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
