"""One real OpenBao dev server per test module (see tests/vault.py)."""
from __future__ import annotations

import itertools

import pytest

from tests.vault import OpenBaoServer, enable_transit


@pytest.fixture(scope="module")
def openbao():
    with OpenBaoServer() as server:
        enable_transit(server.client())
        yield server


@pytest.fixture(scope="module")
def root_client(openbao):
    return openbao.client()


_names = itertools.count()


@pytest.fixture
def key_name(request):
    """A fresh Transit key name per test (the server is shared by the module)."""
    return f"{request.node.name.split('[')[0].replace('_', '-')[:40]}-{next(_names)}"
