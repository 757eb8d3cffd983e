"""The Linux peer's TCP sockets of either family over NETLINK_SOCK_DIAG: the
timewait sockets, which the tracepoint peer_states.py reads cannot show."""

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
        linux, linux_port, stack_port = key
        found = self._ask(
            netlink.NLM_F_REQUEST, _ANY_STATE, _family(stack),
            # The socket's own end (Linux) is the source.
            idiag_sport=linux_port, idiag_src=_address(linux),
            idiag_dport=stack_port, idiag_dst=_address(stack),
            idiag_cookie=_NO_COOKIE,
        )  # fmt: skip
        return next(iter(found.values()), None)

    def timewait_states(self, stack: str) -> dict[Key, str]:
        """Every socket in FIN_WAIT2 or TIME_WAIT whose remote end is `stack`."""
        states = (1 << diag.SS_FIN_WAIT2) | (1 << diag.SS_TIME_WAIT)
        found = self._ask(netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, states, _family(stack))
        return {key: state for (key, remote), state in found.items() if remote == stack}

    def _ask(
        self, flags: int, states: int, family: int, **sock_id: object
    ) -> dict[tuple[Key, str], str]:
        """Send a request; the timewait states in the answers, by (4-tuple, remote)."""
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
                    state = _TIMEWAIT_SUBSTATES.get(answer["idiag_state"])
                    if state is not None:
                        linux = canonical_address(answer["idiag_src"])
                        key = (linux, answer["idiag_sport"], answer["idiag_dport"])
                        found[key, canonical_address(answer["idiag_dst"])] = state
                    if not flags & netlink.NLM_F_DUMP:  # an exact lookup has one answer
                        return found


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
