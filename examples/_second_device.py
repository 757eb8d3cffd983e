"""The TUN device the examples open beside `ustack lab`'s daemon (which has
tun0, 198.18.0.0/24): tun1, a subnet of its own, so both run side by side.
Shared by echo_server.py, http_client.py and udp_exchange.py."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import ustack
from ustack.daemon.running import RunningStack

STACK, STACK6 = "198.18.1.2", "2001:2:0:1::2"  # ustack's addresses on tun1
LINUX, LINUX6 = "198.18.1.1", "2001:2:0:1::1"  # Linux's end of tun1


def open_second_device() -> AbstractAsyncContextManager[RunningStack]:
    """ustack on tun1, created for the example and gone when it ends."""
    return ustack.open_stack(
        "tun1",
        address=STACK,
        linux_side=f"{LINUX}/24",
        address6=STACK6,
        linux_side6=f"{LINUX6}/64",
    )
