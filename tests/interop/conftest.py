from collections.abc import Iterator
from pathlib import Path

import pytest

from ustack.linux.lab import Netns, UstackDaemon, netns, remove_stale_namespaces


@pytest.fixture(scope="session", autouse=True)
def _clean_stale_namespaces() -> None:
    remove_stale_namespaces()


@pytest.fixture
def ns() -> Iterator[Netns]:
    with netns() as namespace:
        yield namespace


@pytest.fixture
def daemon(ns: Netns, tmp_path: Path) -> Iterator[UstackDaemon]:
    with UstackDaemon.start(ns, tmp_path) as d:
        yield d
