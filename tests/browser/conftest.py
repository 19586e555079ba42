"""Browser tests: Debian's headless Chromium driven by Playwright against a real ASGI server
(Daphne: HTTP and the live websocket), a real Celery worker, PostgreSQL, Redis (the broker and the
channel layer) and the OpenID provider stand-in; people sign in through its login page.

The servers are started once per module and outlive each test's database flush; each test makes
its own tenant, users and runs through the real services."""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest
import requests
from django.conf import settings

from tests.integration.conftest import Processes, wait_until
from tests.keycloak_standin import CLIENT_ID, CLIENT_SECRET, REALM, KeycloakStandin
from tests.servers import ServerStartError, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / "var" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1366, "height": 768}

__all__ = ["wait_until"]


def _requirements() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is absent (deploy/test-browser.sh installs Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is absent (pip install -e '.[test]')"
    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        return "browser tests need PostgreSQL (GATEHOUSE_DATABASE_URL); run them with `make test`"
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        return "browser tests need Redis (GATEHOUSE_BROKER_URL); run them with `make test`"
    return None


@pytest.fixture(scope="module")
def keycloak():
    if (reason := _requirements()) is not None:
        pytest.skip(reason)
    with KeycloakStandin() as server:
        yield server


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, keycloak, tmp_path_factory):
    """Daphne and a Celery worker against the test database, in oidc mode against the stand-in."""
    import redis

    root = tmp_path_factory.mktemp("browser")
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "GATEHOUSE_PROFILE": "test",
        # The application role, as in production: row-level security and the audit log's privileges apply.
        "GATEHOUSE_DATABASE_URL": f"postgres://gatehouse_app:gatehouse_app@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "GATEHOUSE_BROKER_URL": settings.CELERY_BROKER_URL,
        "GATEHOUSE_ARTEFACT_ROOT": str(root / "artefacts"),
        "GATEHOUSE_WORKDIR_ROOT": str(root / "work"),
        "GATEHOUSE_APPROVAL_MASTER_KEY_FILE": str(root / "approval-master.key"),
        "GATEHOUSE_AUDIT_KEY_FILE": str(root / "audit.key"),
        "GATEHOUSE_VAR_DIR": str(root / "var"),
        "GATEHOUSE_DB_CONN_MAX_AGE": "0",
        "GATEHOUSE_AUTH_MODE": "oidc",
        "GATEHOUSE_KEYCLOAK_URL": keycloak.url,
        "GATEHOUSE_KEYCLOAK_REALM": REALM,
        "GATEHOUSE_KEYCLOAK_CLIENT_ID": CLIENT_ID,
        "GATEHOUSE_KEYCLOAK_CLIENT_SECRET": CLIENT_SECRET,
        "GATEHOUSE_AUTH_INTROSPECTION_CACHE_SECONDS": "0",
        "GATEHOUSE_HEARTBEAT_SECONDS": "0.3",
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("GATEHOUSE_ARTEFACT_S3_BUCKET", "GATEHOUSE_DB_ALLOW_AUDIT_PURGE", "DJANGO_ALLOW_ASYNC_UNSAFE"):
        env.pop(key, None)
    logdir = root / "logs"
    logdir.mkdir()
    procs = Processes(env, logdir)
    port = free_port()
    procs._start("daphne", [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "gateway.asgi:application"],
                 {"GATEHOUSE_DB_SCOPE": "request"})
    procs.worker("worker", concurrency=1, extra_env={"GATEHOUSE_DB_SCOPE": "system"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(f"{base}/login/", timeout=2, allow_redirects=False)
            break
        except requests.RequestException:
            if procs.procs["daphne"].poll() is not None or time.monotonic() > deadline:
                procs.stop_all()
                raise ServerStartError(f"daphne did not start:\n{procs.log('daphne')[-3000:]}")
            time.sleep(0.2)
    settings_for_test = {"GATEHOUSE_ARTEFACT_STORE": {"backend": "file", "root": str(root / "artefacts")}}
    yield {"base": base, "procs": procs, "root": root, "settings": settings_for_test, "keycloak": keycloak}
    procs.stop_all()


@pytest.fixture
def live(stack, transactional_db, settings):
    """One test's view of the stack: this process dispatches to the same Celery queue and artefact
    store as the servers, and may use Django's ORM while Playwright's event loop runs."""
    settings.GATEHOUSE_ARTEFACT_STORE = stack["settings"]["GATEHOUSE_ARTEFACT_STORE"]
    settings.GATEHOUSE_ENGINE = {**settings.GATEHOUSE_ENGINE, "DISPATCHER": "gateway.dispatch.CeleryDispatcher",
                                 "WORKDIR_ROOT": str(stack["root"] / "work")}
    # Approvers' keys are sealed under one master key, whichever process enrols or signs.
    settings.GATEHOUSE_APPROVAL_SIGNING = {**settings.GATEHOUSE_APPROVAL_SIGNING,
                                           "MASTER_KEY_FILE": str(stack["root"] / "approval-master.key")}
    yield stack


@pytest.fixture(scope="module")
def browser(stack):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread for as long as the browser lives;
    # the tests (and the database flush after each) use Django's ORM in the same thread meanwhile.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as pw:
            instance = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            yield instance
            instance.close()
    finally:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


# Reported by every page as a console error: a Content-Security-Policy violation (also caught by the
# securitypolicyviolation listener below), a script error, a failed asset or fetch. Only these are
# expected: a page answering 4xx on purpose (a refused form, something out of the viewer's scope),
# a live region's partial answering 401/404, and the live socket closing as a context ends.
HTTP_ERROR = re.compile(r"^Failed to load resource: the server responded with a status of (4\d\d)\b")
SOCKET_CLOSED = re.compile(r"^WebSocket connection to 'ws://[^']+/ws/live/' failed")


def expected_console(text: str, resource: str, page_url: str) -> bool:
    if SOCKET_CLOSED.search(text):
        return True
    status = HTTP_ERROR.search(text)
    if status is None:
        return False
    if resource.endswith("/favicon.ico") and "/realms/" in page_url:
        return True  # the identity provider's login page (not ours) has no icon
    if resource.split("#")[0] == page_url.split("#")[0]:
        return True  # the document itself: an error page shown on purpose
    return status.group(1) in ("401", "404") and resource.rstrip("/").endswith("/partial")
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", function (e) {
  console.error("CSP violation: " + e.violatedDirective + " blocked " + (e.blockedURI || "inline") +
                " at " + e.sourceFile + ":" + e.lineNumber);
});
"""


@pytest.fixture
def console_errors():
    """Console errors and uncaught exceptions of every page a test opens (each `new_page` context);
    the test fails on any that is not expected."""
    errors: list[str] = []
    yield errors
    unexpected = [f"{text} ({resource} on {page_url})" for text, resource, page_url in errors
                  if not expected_console(text, resource, page_url)]
    assert not unexpected, "console errors or CSP violations:\n" + "\n".join(unexpected)


@pytest.fixture
def new_page(browser, console_errors):
    """A fresh browser context (its own cookies) per person, at a laptop's size; console errors and
    CSP violations of its pages are collected (console_errors) and fail the test."""
    contexts = []

    def watch(page):
        page.on("console", lambda msg: console_errors.append((msg.text, (msg.location or {}).get("url", ""), page.url))
                if msg.type == "error" else None)
        page.on("pageerror", lambda exc: console_errors.append((f"uncaught: {exc}", "", page.url)))

    def make():
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(20_000)
        context.add_init_script(CSP_LISTENER)
        context.on("page", watch)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def sign_in(page, base: str, username: str, password: str = "pw", next_url: str = "/inbox/") -> None:
    """Open a page, get sent to the OpenID provider's login form, sign in, land back on the page."""
    page.goto(f"{base}{next_url}")
    page.wait_for_url("**/protocol/openid-connect/auth**")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button")
    page.wait_for_url(f"{base}{next_url}")


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


