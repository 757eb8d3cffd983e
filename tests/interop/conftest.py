from collections.abc import Iterator
from pathlib import Path

import pytest

from ustack.linux.lab import FAMILIES
from ustack.linux.lab import Family
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon
from ustack.linux.lab import netns
from ustack.linux.lab import remove_stale_namespaces


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


@pytest.fixture(params=FAMILIES, ids=[family.name for family in FAMILIES])
def family(request: pytest.FixtureRequest) -> Family:
    """A test taking `family` runs over IPv4 and over IPv6 (issue 15)."""
    family: Family = request.param
    return family
