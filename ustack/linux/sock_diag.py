"""The Linux peer's TCP sockets of either family over NETLINK_SOCK_DIAG: the
timewait sockets, which the tracepoint peer_states.py reads cannot show, and
whether a socket lives in this network namespace (a netlink socket answers
for the namespace it was made in; the tracepoint is machine-wide)."""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import socket

from pyroute2 import netlink
from pyroute2.netlink import diag

# (the Linux socket's address, its port, the stack's port): our connection's key order
Key = tuple[str, int, int]


def canonical_address(text: str) -> str:
    """The text the trace writes for an address of either family (RFC 5952
    for IPv6); an IPv4-mapped IPv6 address (::ffff:198.18.0.1, a dual-stack
    socket's view of an IPv4 peer, RFC 4291 2.5.5.2) is its IPv4 address."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


# pyroute2 builds the requests and decodes the answers. Its DiagSocket is not
# used: each of its calls runs an asyncio loop of its own (run_until_complete),
# which cannot run on the thread of the daemon's loop, where the lookups are
# made; so sending and receiving is ours, on a plain blocking netlink socket.
_TIMEWAIT_SUBSTATES = {diag.SS_FIN_WAIT2: "FIN_WAIT_2", diag.SS_TIME_WAIT: "TIME_WAIT"}
_ANY_STATE = 0xFFFFFFFF
_NO_COOKIE = (1 << 64) - 1  # INET_DIAG_NOCOOKIE: look the socket up by its 4-tuple


class SockDiag:
    """Exact lookups and dumps of TCP sockets of either family over NETLINK_SOCK_DIAG, in
    the network namespace of the thread that made it. A timewait socket reports
    its substate (FIN_WAIT2 or TIME_WAIT) as its state."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_SOCK_DIAG)
        self._sock.settimeout(1.0)
        self._seq = itertools.count(1)
        self._marshal = diag.MarshalDiag()

    def close(self) -> None:
        self._sock.close()

    def timewait_state(self, key: Key, stack: str) -> str | None:
        """The state of the timewait socket on this 4-tuple, if there is one."""
        return next((state for state in self._lookup(key, stack).values() if state), None)

    def holds(self, key: Key, stack: str) -> bool:
        """Whether a socket of any state (a full one or a timewait one) holds
        this 4-tuple in this namespace."""
        return bool(self._lookup(key, stack))

    def _lookup(self, key: Key, stack: str) -> dict[tuple[Key, str], str]:
        """The sockets on this exact 4-tuple: one round trip."""
        linux, linux_port, stack_port = key
        return self._ask(
            netlink.NLM_F_REQUEST, _ANY_STATE, _family(stack),
            # The socket's own end (Linux) is the source.
            idiag_sport=linux_port, idiag_src=_address(linux),
            idiag_dport=stack_port, idiag_dst=_address(stack),
            idiag_cookie=_NO_COOKIE,
        )  # fmt: skip

    def timewait_states(self, stack: str) -> dict[Key, str]:
        """Every socket in FIN_WAIT2 or TIME_WAIT whose remote end is `stack`."""
        states = (1 << diag.SS_FIN_WAIT2) | (1 << diag.SS_TIME_WAIT)
        found = self._ask(netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, states, _family(stack))
        return {key: state for (key, remote), state in found.items() if state and remote == stack}

    def _ask(
        self, flags: int, states: int, family: int, **sock_id: object
    ) -> dict[tuple[Key, str], str]:
        """Send a request; the timewait states in the answers, by (4-tuple,
        remote); "" for a socket in any other state."""
        seq = next(self._seq)
        request = diag.inet_diag_req()
        request["header"].update(type=diag.SOCK_DIAG_BY_FAMILY, flags=flags, sequence_number=seq)
        request.update(sdiag_family=family, sdiag_protocol=socket.IPPROTO_TCP,
                       idiag_states=states, **sock_id)  # fmt: skip
        request.encode()
        self._sock.send(request.data)
        found: dict[tuple[Key, str], str] = {}
        while True:
            for answer in self._marshal.parse(self._sock.recv(1 << 16)):
                kind = answer["header"]["type"]
                if answer["header"]["sequence_number"] != seq:
                    continue
                if kind == netlink.NLMSG_DONE:
                    return found
                if kind == netlink.NLMSG_ERROR:
                    # MarshalDiag picks a message's class by address family, not
                    # by type, so it leaves an error undecoded.
                    error = netlink.nlmsgerr(answer.data, offset=answer.offset)
                    error.decode()
                    code = -error["error"]
                    if code in (0, errno.ENOENT):
                        return found
                    raise OSError(code, os.strerror(code))
                if kind == diag.SOCK_DIAG_BY_FAMILY:
                    state = _TIMEWAIT_SUBSTATES.get(answer["idiag_state"], "")
                    linux = canonical_address(answer["idiag_src"])
                    key = (linux, answer["idiag_sport"], answer["idiag_dport"])
                    found[key, canonical_address(answer["idiag_dst"])] = state
                    if not flags & netlink.NLM_F_DUMP:  # an exact lookup has one answer
                        return found


# include/uapi/linux/sock_diag.h, enum sknetlink_groups (Linux 4.9+).
SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET6_TCP_DESTROY = 3
_SOL_NETLINK = 270
_NETLINK_ADD_MEMBERSHIP = 1
_SO_RCVBUFFORCE = 33
NOTICE_BUFFER = 8 << 20  # bytes; a notice takes about 1 KiB of it


class DestroyNotices:
    """The cookies of the TCP sockets of this network namespace, either
    family, as each is freed: the kernel multicasts an inet_diag_msg to the
    destroy groups of the namespace's own sock_diag netlink socket
    (net/core/sock_diag.c, sock_diag_broadcast_destroy; needs CAP_NET_ADMIN).
    Its 4-tuple may be cleared by then (a refused connect disconnects), its
    cookie is not: the cookie the tracepoint tcp:tcp_destroy_sock shows."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_SOCK_DIAG)
        try:
            # A burst of short connections frees hundreds of sockets at once:
            # room for them while the loop is busy (ENOBUFS loses notices).
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, NOTICE_BUFFER)
            except OSError:  # without CAP_NET_ADMIN: what rmem_max allows
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NOTICE_BUFFER)
            self._sock.bind((0, 0))
            for group in (SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET6_TCP_DESTROY):
                self._sock.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, group)
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self._marshal = diag.MarshalDiag()

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def read(self) -> tuple[list[int], bool]:
        """The cookies of the notices waiting to be read (none: []), and
        whether the kernel had to drop some (ENOBUFS: the socket goes on)."""
        cookies: list[int] = []
        lost = False
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                return cookies, lost
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                lost = True
                continue
            for notice in self._marshal.parse(data):
                if notice["header"]["type"] == diag.SOCK_DIAG_BY_FAMILY:
                    cookies.append(int(notice["idiag_cookie"]))


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _address(text: str) -> tuple[int, int, int, int]:
    """An address as inet_diag_sockid holds it: IPv4 in the first of four
    32-bit words, IPv6 in all four (pyroute2 packs them big-endian)."""
    address = ipaddress.ip_address(text)
    if address.version == 4:
        return int(address), 0, 0, 0
    value = int(address)
    return (value >> 96, (value >> 64) & 0xFFFFFFFF, (value >> 32) & 0xFFFFFFFF,
            value & 0xFFFFFFFF)  # fmt: skip
