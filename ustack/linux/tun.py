"""The link layer: a Linux TUN device (python-pytun), configured over netlink (pyroute2).

With offloads on (the default), the device speaks the virtio-net header
(IFF_VNET_HDR), as a NIC driver does: we hand the kernel TCP segments of up to
64 KB that it cuts to the MSS itself (GSO), and it hands us large coalesced
segments whose TCP checksum we finish (checksum offload). One system call then
carries tens of segments; on the wire the peer sees ordinary ones. Both
families go the same way (GSO TCPV4 or TCPV6, the kernel's TSO4 and TSO6).

IPv6 is enabled on a device we create, and only there (disable_ipv6=0 in the
namespace we run in), with the Linux side's address marked IFA_F_NODAD: usable
at once, no duplicate address detection to wait for on a point-to-point link.

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

from ustack.wire.checksum import Buffer
from ustack.wire.checksum import ones_sum
from ustack.wire.ipv4 import IPV4_PLAIN_FIRST_BYTE
from ustack.wire.ipv4 import PROTO_TCP

log = logging.getLogger("ustack.link")

TUN_CLONE_DEVICE = "/dev/net/tun"
DEFAULT_LINUX_SIDE = ipaddress.IPv4Interface("198.18.0.1/24")
DEFAULT_LINUX_SIDE6 = ipaddress.IPv6Interface("2001:2::1/64")
# RFC 8200 5: every link IPv6 runs over carries 1280-byte packets; Linux
# takes IPv6 off a device with a smaller MTU (addrconf_notify).
IPV6_MIN_MTU = 1280
IFA_F_NODAD = 0x02  # <linux/if_addr.h>

# <linux/if_tun.h> and <linux/virtio_net.h>
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
VNET_HEADER = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, offset
VNET_HEADER_SIZE = VNET_HEADER.size
VNET_F_NEEDS_CSUM = 1
VNET_GSO_NONE, VNET_GSO_TCPV4, VNET_GSO_TCPV6 = 0, 1, 4
PLAIN_HEADER = VNET_HEADER.pack(0, VNET_GSO_NONE, 0, 0, 0, 0)
TCP_CHECKSUM_OFFSET = 16
IPV6_HEADER_LENGTH = 40
IPV6_FIRST_NIBBLE = 6
IPV6_NEXT_HEADER_OFFSET = 6
# A TCP packet whose checksum the kernel is to finish: IPv4 (20-byte header)
# and IPv6 (40 bytes: our TCP segments carry no extension header).
PARTIAL_TCP_HEADER = VNET_HEADER.pack(
    VNET_F_NEEDS_CSUM, VNET_GSO_NONE, 0, 0, 20, TCP_CHECKSUM_OFFSET
)
PARTIAL_TCP6_HEADER = VNET_HEADER.pack(
    VNET_F_NEEDS_CSUM, VNET_GSO_NONE, 0, 0, IPV6_HEADER_LENGTH, TCP_CHECKSUM_OFFSET
)
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
    # Its IPv6 address and prefix; None (--no-ipv6): IPv6 stays off the device.
    linux_side6: ipaddress.IPv6Interface | None = DEFAULT_LINUX_SIDE6
    mtu: int | None = None  # None: 1500 on a new device, the device's own on an existing one
    offload: bool = True  # virtio-net header: GSO out, coalesced segments and checksum offload in


class TunLink:
    """An open TUN device: raw IP packets of both families in and out through
    a non-blocking fd."""

    def __init__(
        self,
        tun: pytun.TunTapDevice,
        created: bool,
        mtu: int,
        offload: bool = False,
        ipv6: bool = False,
    ) -> None:
        self._tun = tun
        self.created = created
        self.mtu = mtu
        self.offload = offload
        self.ipv6 = ipv6  # the Linux side has its IPv6 address here
        self.finish_checksums = False  # see read()
        # Our TCP packets carry only the pseudo-header sum; the kernel finishes
        # them (VIRTIO_NET_HDR_F_NEEDS_CSUM), as a NIC with checksum offload.
        self.partial_tcp_checksums = False
        self.name: str = tun.name
        self.fd: int = tun.fileno()
        self.queue = 0  # which queue of a multi-queue device (open_queues)

    @classmethod
    def open(cls, config: LinkConfig) -> TunLink:
        return cls.open_queues(config, 1)[0]

    @classmethod
    def open_queues(cls, config: LinkConfig, queues: int) -> list[TunLink]:
        """`queues` > 1: the device with IFF_MULTI_QUEUE, one fd (one TunLink)
        per queue. The kernel puts each packet it sends us on one queue, by
        its flow's hash (drivers/net/tun.c tun_automq_select_queue), so one
        reader per queue sees every packet of its flows. The device lives
        while any queue is open."""
        if not os.path.exists(TUN_CLONE_DEVICE):
            raise LinkError(f"{TUN_CLONE_DEVICE} does not exist (is the tun module loaded?)")
        tuns: list[pytun.TunTapDevice] = []
        with IPRoute() as ipr:
            existed = bool(ipr.link_lookup(ifname=config.device))
            try:
                for queue in range(queues):
                    tun = _attach(config.device, existed or queue > 0, config.offload, queues > 1)
                    tuns.append(tun)
                    flags = fcntl.fcntl(tun.fileno(), fcntl.F_GETFL)
                    fcntl.fcntl(tun.fileno(), fcntl.F_SETFL, flags | os.O_NONBLOCK)
                    if config.offload:
                        _accept_offloads(tun.fileno())
                mtu, ipv6 = _configure(ipr, config, existed)
            except OSError as exc:
                for tun in tuns:
                    tun.close()
                raise LinkError(f"cannot set up {config.device}: {exc.strerror or exc}") from None
            except BaseException:
                for tun in tuns:
                    tun.close()
                raise
        verb = "created" if not existed else "attached to existing"
        offloads = ", offloads GSO/TSO/csum" if config.offload else ""
        linux_side = f"{config.linux_side} and {config.linux_side6}" if ipv6 else config.linux_side
        many = f", {queues} queues" if queues > 1 else ""
        log.info(
            "%s %s, %s on the Linux side, mtu %d%s%s",
            verb, tuns[0].name, linux_side, mtu, offloads, many,
        )  # fmt: skip
        links = [
            cls(tun, created=not existed, mtu=mtu, offload=config.offload, ipv6=ipv6)
            for tun in tuns
        ]
        for queue, link in enumerate(links):
            link.queue = queue
        return links

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
            elif self.partial_tcp_checksums:
                os.writev(self.fd, [_partial_checksum_header(packet), packet])
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

    def forget(self) -> None:
        """Close this process's fd without a word: another process (the
        worker of this queue) holds the queue open."""
        self._tun.close()

    def close(self) -> None:
        """Close our fd: a device we created disappears with it (with its
        last queue's, on a multi-queue device: queue 0's says so)."""
        self._tun.close()
        if self.queue:
            return
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


def _partial_checksum_header(packet: bytearray | bytes | memoryview) -> bytes:
    """The virtio-net header of a packet going out with `partial_tcp_checksums`:
    a plain IPv4 or IPv6 TCP segment has its checksum finished by the kernel
    (CHECKSUM_PARTIAL from the pseudo-header sum TCP left); anything else
    carries its own."""
    first = packet[0]
    if first == IPV4_PLAIN_FIRST_BYTE:
        return PARTIAL_TCP_HEADER if packet[9] == PROTO_TCP else PLAIN_HEADER
    if first >> 4 == IPV6_FIRST_NIBBLE and packet[IPV6_NEXT_HEADER_OFFSET] == PROTO_TCP:
        return PARTIAL_TCP6_HEADER
    return PLAIN_HEADER


def _gso_header(packet: bytearray | bytes | memoryview, gso_size: int) -> bytes:
    """The virtio-net header for a TCP segment the kernel is to cut (GSO TCPV4
    or TCPV6 by the IP version); TCP built it with the partial checksum the
    kernel completes for each piece."""
    if packet[0] >> 4 == IPV6_FIRST_NIBBLE:
        ip_header, gso_type = IPV6_HEADER_LENGTH, VNET_GSO_TCPV6
    else:
        ip_header, gso_type = (packet[0] & 0x0F) * 4, VNET_GSO_TCPV4
    tcp_header = (packet[ip_header + 12] >> 4) * 4
    return VNET_HEADER.pack(
        VNET_F_NEEDS_CSUM,
        gso_type,
        ip_header + tcp_header,
        gso_size,
        ip_header,
        TCP_CHECKSUM_OFFSET,
    )


def _accept_offloads(fd: int) -> None:
    """What we take from the kernel: partial checksums and TCP super-segments
    of both families (TSO6 where the kernel offers it: EINVAL where not)."""
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)


def _attach(
    name: str, existed: bool, offload: bool = False, multi_queue: bool = False
) -> pytun.TunTapDevice:
    flags = pytun.IFF_TUN | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if offload else 0)
    flags |= pytun.IFF_MULTI_QUEUE if multi_queue else 0
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
        return (
            f"{name} exists and is not a TUN device, or not one with the same "
            "queue mode (IFF_MULTI_QUEUE for --queues > 1)"
        )
    if code == errno.ENOENT:
        return f"{TUN_CLONE_DEVICE} cannot be opened (is the tun module loaded?)"
    return f"cannot open TUN device {name}: {text}"


def _configure(ipr: IPRoute, config: LinkConfig, existed: bool) -> tuple[int, bool]:
    """Bring the device up with its addresses and MTU; return the MTU in force
    and whether the Linux side has its IPv6 address on it.

    On an existing device, only what is missing is changed, so a persistent
    device that was set up beforehand needs no privilege here."""
    (index,) = ipr.link_lookup(ifname=config.device)
    link = ipr.get_links(index)[0]
    mtu = config.mtu or (link.get_attr("IFLA_MTU") if existed else 1500)
    iface, iface6 = config.linux_side, config.linux_side6
    if iface6 is not None and mtu < IPV6_MIN_MTU:
        log.warning("mtu %d is below IPv6's minimum %d (RFC 8200 5): IPv4 only", mtu, IPV6_MIN_MTU)
        iface6 = None
    try:
        if not existed:
            _set_ipv6(config.device, enabled=iface6 is not None)
            # The kernel queues packets for us here; 500 overflows when thousands
            # of connections answer at once (each drop costs a retransmission).
            ipr.link("set", index=index, txqlen=TX_QUEUE_LENGTH)
        if link.get_attr("IFLA_MTU") != mtu:
            ipr.link("set", index=index, mtu=mtu)
        if not _has_address(ipr, index, iface):
            _add_address(ipr, index, iface)
        if iface6 is not None and not _has_address(ipr, index, iface6):
            try:
                _add_address(ipr, index, iface6)
            except NetlinkError as exc:
                if not existed or exc.code not in (errno.EPERM, errno.EACCES):
                    raise
                # A device set up beforehand for IPv4 only keeps working as
                # it did, without privilege: IPv4 only, said once.
                log.warning(
                    "IPv4 only: %s has no %s and it cannot be added (%s); as root: "
                    "ip addr add %s dev %s nodad",
                    config.device, iface6, os.strerror(exc.code), iface6, config.device,
                )  # fmt: skip
                iface6 = None
        if not link["flags"] & 1:  # IFF_UP
            ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        addresses = f"{iface}, {iface6}" if iface6 is not None else f"{iface}"
        if exc.code == errno.EPERM:
            raise LinkError(
                f"not allowed to configure {config.device} (address {addresses}, mtu {mtu}): "
                "set it up beforehand, or run as root / with CAP_NET_ADMIN"
            ) from None
        if exc.code == errno.EINVAL:
            raise LinkError(f"the kernel refused mtu {mtu} for {config.device}") from None
        if exc.code == errno.EACCES and iface6 is not None:
            raise LinkError(
                f"the kernel refused {iface6} on {config.device}: IPv6 is disabled there "
                "(enable it, or run with --no-ipv6)"
            ) from None
        raise LinkError(f"cannot configure {config.device}: {exc}") from None
    return mtu, iface6 is not None


def _add_address(
    ipr: IPRoute, index: int, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
) -> None:
    ipr.addr(
        "add",
        index=index,
        address=str(address.ip),
        prefixlen=address.network.prefixlen,
        # IPv6: no DAD on a point-to-point link, usable at once (not a
        # "tentative" address for a second, which nothing may bind to).
        **({"flags": IFA_F_NODAD} if address.version == 6 else {}),
    )


def _has_address(
    ipr: IPRoute, index: int, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
) -> bool:
    family = 10 if address.version == 6 else 2  # AF_INET6, AF_INET
    present = {
        (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
        for a in ipr.get_addr(index=index, family=family)
    }
    return (str(address.ip), address.network.prefixlen) in present


def _set_ipv6(device: str, enabled: bool) -> None:
    """IPv6 on the device we created, and only there (its own sysctls, in the
    namespace we run in); off with --no-ipv6. On, without router
    solicitations (accept_ra=0): no router lives behind a TUN, and the
    kernel would otherwise send one now and then, forever (rtr_solicits -1),
    into every capture. (A TUN is IFF_NOARP: the kernel does no DAD there and
    joins no solicited-node group, so no neighbour or MLD messages either.)"""
    knobs = {"accept_ra": "0", "disable_ipv6": "0"} if enabled else {"disable_ipv6": "1"}
    try:
        for knob, value in knobs.items():
            with open(f"/proc/sys/net/ipv6/conf/{device}/{knob}", "w") as sysctl:
                sysctl.write(value)
    except OSError:
        if enabled:
            raise LinkError(
                f"cannot enable IPv6 on {device} (no IPv6 in this kernel?): run with --no-ipv6"
            ) from None
