#!/usr/bin/env bash
# Install (when absent) and start the servers the test suite talks to: PostgreSQL and Redis.
# Idempotent: a second run changes nothing. Later test layers add their servers here.
set -euo pipefail

log() { printf '[test-services] %s\n' "$*"; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT_UPDATED=""
apt_install() {
  if [ -z "$APT_UPDATED" ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# --- PostgreSQL ---------------------------------------------------------------
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  log "installing PostgreSQL"
  apt_install postgresql postgresql-client
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  log "starting PostgreSQL $version"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL did not start"; exit 1; }

# The application's role: a password so it works under trust and scram alike; CREATEDB for the test database.
psql_admin() { $SUDO runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='gatehouse'")" != "1" ]; then
  log "creating role gatehouse"
  psql_admin -c "CREATE ROLE gatehouse LOGIN CREATEDB PASSWORD 'gatehouse'"
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='gatehouse'")" != "1" ]; then
  psql_admin -c "CREATE DATABASE gatehouse OWNER gatehouse"
fi
# The role the application runs as (workers in tests/integration): it owns nothing and is a member
# of no role; `migrate` (as gatehouse, the owner) grants it INSERT and SELECT only on the audit log
# (audit/db_privileges.py). gatehouse is not made a member of it either: the owner needs nothing
# from it, and two unrelated roles keep every statement attributable to the one that ran it.
APP_ROLE_ATTRS="NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION"
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='gatehouse_app'")" != "1" ]; then
  log "creating role gatehouse_app"
  psql_admin -c "CREATE ROLE gatehouse_app LOGIN PASSWORD 'gatehouse_app' $APP_ROLE_ATTRS"
elif [ "$(psql_admin -c "SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolbypassrls OR rolreplication
                          OR NOT rolcanlogin FROM pg_roles WHERE rolname='gatehouse_app'")" != "f" ]; then
  log "restoring the attributes of role gatehouse_app"
  psql_admin -c "ALTER ROLE gatehouse_app LOGIN $APP_ROLE_ATTRS"
fi

# --- Redis ----------------------------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1; then
  log "installing Redis"
  apt_install redis-server
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  $SUDO mkdir -p /var/lib/redis /var/log/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/gatehouse-test.log
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.5; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { log "Redis did not start"; exit 1; }
log "PostgreSQL and Redis are up"

# --- Slurm (the `slurm` executor's tests) ---------------------------------------------
"$(dirname "$0")/test-slurm.sh" || log "Slurm could not be started: the slurm executor tests will skip"
"$(dirname "$0")/test-browser.sh" || log "Chromium could not be installed: the browser tests will skip"
"$(dirname "$0")/test-containers.sh" || log "podman could not run a container: the live container tests will skip"
