import logging
import os
from pathlib import Path

import pytest

# Scapy, the tests' independent reading of the wire, warns at import about the
# host's routes and interfaces; quieted once here, before any test module imports it.
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """netns tests need root. Off CI they are skipped for a non-root user; on CI
    (CI=true) a missing privilege is a failure, never a silent skip."""
    interop = Path(__file__).resolve().parent / "interop"
    for item in items:
        if interop in Path(item.path).parents:
            item.add_marker(pytest.mark.netns)
    if os.geteuid() == 0 or os.environ.get("CI"):
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)
