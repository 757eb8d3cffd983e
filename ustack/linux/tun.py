"""The link layer: a Linux TUN device (python-pytun), configured over netlink (pyroute2).

With offloads on (the default), the device speaks the virtio-net header
(IFF_VNET_HDR), as a NIC driver does: we hand the kernel TCP segments of up to
64 KB that it cuts to the MSS itself (GSO), and it hands us large coalesced
segments whose TCP checksum we finish (checksum offload). One system call then
carries tens of segments; on the wire the peer sees ordinary ones.

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
import struct
from dataclasses import dataclass

import pytun
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ustack.wire.checksum import Buffer, ones_sum
from ustack.wire.ipv4 import IPV4_PLAIN_FIRST_BYTE, PROTO_TCP

log = logging.getLogger("ustack.link")

TUN_CLONE_DEVICE = "/dev/net/tun"
DEFAULT_LINUX_SIDE = ipaddress.IPv4Interface("198.18.0.1/24")

# <linux/if_tun.h> and <linux/virtio_net.h>
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4 = 0x01, 0x02
VNET_HEADER = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, offset
VNET_HEADER_SIZE = VNET_HEADER.size
VNET_F_NEEDS_CSUM = 1
VNET_GSO_NONE, VNET_GSO_TCPV4 = 0, 1
PLAIN_HEADER = VNET_HEADER.pack(0, VNET_GSO_NONE, 0, 0, 0, 0)
# A TCP/IPv4 packet (20-byte IP header) whose checksum the kernel is to finish.
PARTIAL_TCP_HEADER = VNET_HEADER.pack(VNET_F_NEEDS_CSUM, VNET_GSO_NONE, 0, 0, 20, 16)
MAX_PACKET = 65535
TX_QUEUE_LENGTH = 10000
# What a write gets once the device is gone from under its fd (ip link del, or
# its namespace removed): the kernel detaches the fd (tun_chr_write_iter: EBADFD).
GONE_ERRNOS = frozenset({errno.EBADFD, errno.ENODEV, errno.ENXIO})


class LinkError(Exception):
    """The TUN device could not be opened or configured; the message says why."""


class LinkGone(Exception):
    """The open device went away (deleted, or its namespace removed): nothing
    more can be read or written. The message says which device and why."""


@dataclass(frozen=True)
class LinkConfig:
    device: str = "tun0"
    # The kernel's address on the TUN, with the prefix it routes to us.
    linux_side: ipaddress.IPv4Interface = DEFAULT_LINUX_SIDE
    mtu: int | None = None  # None: 1500 on a new device, the device's own on an existing one
    offload: bool = True  # virtio-net header: GSO out, coalesced segments and checksum offload in


class TunLink:
    """An open TUN device: raw IPv4 packets in and out through a non-blocking fd."""

    def __init__(
        self, tun: pytun.TunTapDevice, created: bool, mtu: int, offload: bool = False
    ) -> None:
        self._tun = tun
        self.created = created
        self.mtu = mtu
        self.offload = offload
        self.finish_checksums = False  # see read()
        # Our TCP packets carry only the pseudo-header sum; the kernel finishes
        # them (VIRTIO_NET_HDR_F_NEEDS_CSUM), as a NIC with checksum offload.
        self.partial_tcp_checksums = False
        self.name: str = tun.name
        self.fd: int = tun.fileno()

    @classmethod
    def open(cls, config: LinkConfig) -> TunLink:
        if not os.path.exists(TUN_CLONE_DEVICE):
            raise LinkError(f"{TUN_CLONE_DEVICE} does not exist (is the tun module loaded?)")
        with IPRoute() as ipr:
            existed = bool(ipr.link_lookup(ifname=config.device))
            tun = _attach(config.device, existed, config.offload)
            try:
                flags = fcntl.fcntl(tun.fileno(), fcntl.F_GETFL)
                fcntl.fcntl(tun.fileno(), fcntl.F_SETFL, flags | os.O_NONBLOCK)
                if config.offload:
                    # What we accept from the kernel: partial checksums and TSO.
                    fcntl.ioctl(tun.fileno(), TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
                mtu = _configure(ipr, config, existed)
            except OSError as exc:
                tun.close()
                raise LinkError(f"cannot set up {config.device}: {exc.strerror or exc}") from None
            except BaseException:
                tun.close()
                raise
        verb = "created" if not existed else "attached to existing"
        offloads = ", offloads GSO/TSO/csum" if config.offload else ""
        log.info(
            "%s %s, %s on the Linux side, mtu %d%s",
            verb,
            tun.name,
            config.linux_side,
            mtu,
            offloads,
        )
        return cls(tun, created=not existed, mtu=mtu, offload=config.offload)

    def read(self, size: int = MAX_PACKET) -> tuple[Buffer, bool] | None:
        """One packet and whether its transport checksum is known good, or
        None when none is waiting. With offloads, a coalesced segment may
        exceed the MTU. The kernel hands its own packets over with the
        checksum left partial (CHECKSUM_PARTIAL: no wire has touched them,
        so there is nothing to verify, as Linux itself skips it): the
        packet comes as it is, known good, unless `finish_checksums` asks
        for the field to be filled in (for a pcap that shows true sums)."""
        try:
            if not self.offload:
                return os.read(self.fd, size), False
            data = os.read(self.fd, MAX_PACKET + VNET_HEADER_SIZE)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise self._gone(exc) from None
        if not data[0] & VNET_F_NEEDS_CSUM:  # (flags: the header's first byte)
            return memoryview(data)[VNET_HEADER_SIZE:], False
        if not self.finish_checksums:
            return memoryview(data)[VNET_HEADER_SIZE:], True
        _flags, _gso, _hdr, _size, start, offset = VNET_HEADER.unpack_from(data)
        packet = bytearray(memoryview(data)[VNET_HEADER_SIZE:])
        _finish_checksum(packet, start, offset)
        return packet, True

    def write(self, packet: bytes | bytearray | memoryview, gso_size: int = 0) -> bool:
        """Queue one packet to the kernel; False if its queue is full (a drop).
        A TCP segment longer than the MTU goes with `gso_size`: the kernel cuts
        it into segments of that many payload bytes. LinkGone if the device
        is gone; any other refusal is a drop too."""
        try:
            if not self.offload:
                os.write(self.fd, packet)
            elif gso_size and len(packet) > self.mtu:
                os.writev(self.fd, [_gso_header(packet, gso_size), packet])
            elif (
                self.partial_tcp_checksums
                and packet[9] == PROTO_TCP
                and packet[0] == IPV4_PLAIN_FIRST_BYTE
            ):
                os.writev(self.fd, [PARTIAL_TCP_HEADER, packet])
            else:
                os.writev(self.fd, [PLAIN_HEADER, packet])
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in GONE_ERRNOS:
                raise self._gone(exc) from None
            return False
        return True

    def _gone(self, exc: OSError) -> LinkGone:
        return LinkGone(f"{self.name} went away ({exc.strerror or exc})")

    def close(self) -> None:
        """Close our fd: a device we created disappears with it."""
        self._tun.close()
        if self.created:
            log.info("removed %s", self.name)
        else:
            log.info("detached from %s, left in place", self.name)


def _finish_checksum(packet: bytearray, start: int, offset: int) -> None:
    """CHECKSUM_PARTIAL: the field holds the pseudo-header sum; add the rest
    and store the complement, as a NIC would before putting it on a wire."""
    field = start + offset
    total = ones_sum(memoryview(packet)[start:])
    struct.pack_into("!H", packet, field, ~total & 0xFFFF)


def _gso_header(packet: bytearray | bytes | memoryview, gso_size: int) -> bytes:
    """The virtio-net header for a TCP/IPv4 segment the kernel is to cut; TCP
    built it with the partial checksum the kernel completes for each piece."""
    ihl = (packet[0] & 0x0F) * 4
    tcp_header = (packet[ihl + 12] >> 4) * 4
    return VNET_HEADER.pack(VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, ihl + tcp_header, gso_size, ihl, 16)


def _attach(name: str, existed: bool, offload: bool = False) -> pytun.TunTapDevice:
    flags = pytun.IFF_TUN | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if offload else 0)
    try:
        return pytun.TunTapDevice(name=name, flags=flags)
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
            # The kernel queues packets for us here; 500 overflows when thousands
            # of connections answer at once (each drop costs a retransmission).
            ipr.link("set", index=index, txqlen=TX_QUEUE_LENGTH)
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
