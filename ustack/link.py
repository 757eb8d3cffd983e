"""The link layer: a Linux TUN device (python-pytun), configured over netlink (pyroute2).

`TunLink.open()` either creates a device, which then lives as long as our file
descriptor (the kernel removes it when we close), or attaches to an existing
persistent one (`ip tuntap add dev tun0 mode tun user NAME`), which we leave as
we found it. Every failure becomes a `LinkError` with a one-line message.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
from dataclasses import dataclass

import pytun
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger("ustack.link")

TUN_CLONE_DEVICE = "/dev/net/tun"
DEFAULT_LINUX_SIDE = ipaddress.IPv4Interface("198.18.0.1/24")


class LinkError(Exception):
    """The TUN device could not be opened or configured; the message says why."""


@dataclass(frozen=True)
class LinkConfig:
    device: str = "tun0"
    # The kernel's address on the TUN, with the prefix it routes to us.
    linux_side: ipaddress.IPv4Interface = DEFAULT_LINUX_SIDE
    mtu: int | None = None  # None: 1500 on a new device, the device's own on an existing one


class TunLink:
    """An open TUN device: raw IPv4 packets in and out through a non-blocking fd."""

    def __init__(self, tun: pytun.TunTapDevice, created: bool, mtu: int) -> None:
        self._tun = tun
        self.created = created
        self.mtu = mtu
        self.name: str = tun.name
        self.fd: int = tun.fileno()

    @classmethod
    def open(cls, config: LinkConfig) -> TunLink:
        if not os.path.exists(TUN_CLONE_DEVICE):
            raise LinkError(f"{TUN_CLONE_DEVICE} does not exist (is the tun module loaded?)")
        with IPRoute() as ipr:
            existed = bool(ipr.link_lookup(ifname=config.device))
            tun = _attach(config.device, existed)
            try:
                flags = fcntl.fcntl(tun.fileno(), fcntl.F_GETFL)
                fcntl.fcntl(tun.fileno(), fcntl.F_SETFL, flags | os.O_NONBLOCK)
                mtu = _configure(ipr, config, existed)
            except BaseException:
                tun.close()
                raise
        verb = "created" if not existed else "attached to existing"
        log.info("%s %s, %s on the Linux side, mtu %d", verb, tun.name, config.linux_side, mtu)
        return cls(tun, created=not existed, mtu=mtu)

    def read(self, size: int) -> bytes | None:
        """One packet, or None when none is waiting."""
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            return None

    def write(self, packet: bytes | bytearray | memoryview) -> bool:
        """Queue one packet to the kernel; False if its queue is full (a drop)."""
        try:
            os.write(self.fd, packet)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        """Close our fd: a device we created disappears with it."""
        self._tun.close()
        if self.created:
            log.info("removed %s", self.name)
        else:
            log.info("detached from %s, left in place", self.name)


def _attach(name: str, existed: bool) -> pytun.TunTapDevice:
    try:
        return pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
    except pytun.Error as exc:
        code = exc.args[0] if exc.args else None
        raise LinkError(_attach_failure(name, code, existed, str(exc))) from None


def _attach_failure(name: str, code: int | None, existed: bool, text: str) -> str:
    if code == errno.EPERM:
        if existed:
            return (
                f"not allowed to attach to {name}: it belongs to another user "
                "(ip tuntap add ... user NAME), or run as root / with CAP_NET_ADMIN"
            )
        return f"not allowed to create {name}: run as root or with CAP_NET_ADMIN"
    if code == errno.EBUSY:
        return f"{name} is busy: another process has it open"
    if code == errno.EINVAL and existed:
        return f"{name} exists and is not a TUN device"
    if code == errno.ENOENT:
        return f"{TUN_CLONE_DEVICE} cannot be opened (is the tun module loaded?)"
    return f"cannot open TUN device {name}: {text}"


def _configure(ipr: IPRoute, config: LinkConfig, existed: bool) -> int:
    """Bring the device up with its address and MTU; return the MTU in force.

    On an existing device, only what is missing is changed, so a persistent
    device that was set up beforehand needs no privilege here."""
    (index,) = ipr.link_lookup(ifname=config.device)
    link = ipr.get_links(index)[0]
    mtu = config.mtu or (link.get_attr("IFLA_MTU") if existed else 1500)
    iface = config.linux_side
    addresses = {
        (a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)
    }
    try:
        if not existed:
            _disable_ipv6(config.device)
        if link.get_attr("IFLA_MTU") != mtu:
            ipr.link("set", index=index, mtu=mtu)
        if (str(iface.ip), iface.network.prefixlen) not in addresses:
            ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        if not link["flags"] & 1:  # IFF_UP
            ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        if exc.code == errno.EPERM:
            raise LinkError(
                f"not allowed to configure {config.device} (address {iface}, mtu {mtu}): "
                "set it up beforehand, or run as root / with CAP_NET_ADMIN"
            ) from None
        if exc.code == errno.EINVAL:
            raise LinkError(f"the kernel refused mtu {mtu} for {config.device}") from None
        raise LinkError(f"cannot configure {config.device}: {exc}") from None
    return mtu


def _disable_ipv6(device: str) -> None:
    """ustack speaks IPv4 only: keep the kernel's IPv6 chatter off our device."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{device}/disable_ipv6", "w") as knob:
            knob.write("1")
    except OSError:
        pass  # no IPv6 in this kernel: nothing to silence
