"""ustack: a user-space TCP/IP stack on a Linux TUN device, built to be studied.

`ustack.open_stack()` runs the stack on a TUN device from asyncio code, and
`ustack.open_memory_pair()` two stacks talking in memory (ustack.app); both
are imported when first used, so `import ustack` stays light. `ustack.socket`
(also imported when first used) is the socket API for synchronous code."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from typing import Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ustack.app import open_memory_pair
    from ustack.app import open_stack

__all__ = ["__version__", "open_memory_pair", "open_stack"]


def __getattr__(name: str) -> Any:
    if name in ("open_stack", "open_memory_pair"):
        # By name: the layers below (which import this package) do not depend on it.
        return getattr(importlib.import_module("ustack.app"), name)
    if name == "socket":  # ustack.socket: the socket API for synchronous code
        return importlib.import_module("ustack.socket")
    raise AttributeError(f"module 'ustack' has no attribute {name!r}")
