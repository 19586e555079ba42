# Gatehouse: `make run` brings the portal up with demo data; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

# The suite's servers: PostgreSQL and Redis on loopback (deploy/test-services.sh starts them).
TEST_ENV := GATEHOUSE_PROFILE=test \
	GATEHOUSE_DATABASE_URL=postgres://gatehouse:gatehouse@127.0.0.1:5432/gatehouse \
	GATEHOUSE_BROKER_URL=redis://127.0.0.1:6379/14 \
	GATEHOUSE_VAR_DIR=$(CURDIR)/var/test \
	GATEHOUSE_DB_ALLOW_AUDIT_PURGE=1

.PHONY: run test test-fast bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	deploy/run-embedded.sh

test: $(STAMP)
	deploy/test-services.sh
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

# Everything but the integration tests that start worker processes.
test-fast: $(STAMP)
	deploy/test-services.sh
	$(TEST_ENV) $(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

bench: $(STAMP)
	deploy/test-services.sh
	$(TEST_ENV) $(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf var/test var/work var/broker
