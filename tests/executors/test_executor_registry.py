"""Backend registry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from executors import registry
from executors.base import ExecutorError
from executors.local import LocalExecutor


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    registry.clear_cache()
    yield
    registry.unregister("fake")
    registry.clear_cache()


def test_local_is_preregistered() -> None:
    assert "local" in registry.known_backends()
    ex = registry.get_executor("local")
    assert isinstance(ex, LocalExecutor)
    assert ex.name == "local" and ex.synchronous is True


def test_unknown_backend() -> None:
    with pytest.raises(ExecutorError) as info:
        registry.get_executor("no-such-backend")
    assert info.value.code == "unknown_backend"
    assert "no-such-backend" in info.value.message


def test_instances_are_cached_per_config() -> None:
    # The local executor only knows the exit status of processes its own instance started.
    assert registry.get_executor("local") is registry.get_executor("local")
    slow = registry.get_executor("local", kill_grace=5)
    assert isinstance(slow, LocalExecutor) and slow.kill_grace == 5
    assert slow is not registry.get_executor("local")
    assert slow is registry.get_executor("local", kill_grace=5)


def test_register_a_backend() -> None:
    built: list[dict[str, object]] = []

    def factory(**config: object) -> LocalExecutor:
        built.append(config)
        return LocalExecutor()

    registry.register("fake", factory)
    assert "fake" in registry.known_backends()
    first = registry.get_executor("fake", queue="q")
    assert registry.get_executor("fake", queue="q") is first
    assert built == [{"queue": "q"}]
    registry.register("fake", factory)  # re-registering drops cached instances
    assert registry.get_executor("fake", queue="q") is not first
    registry.unregister("fake")
    with pytest.raises(ExecutorError):
        registry.get_executor("fake")
