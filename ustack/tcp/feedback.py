"""What an ICMP error means to TCP (RFC 1122 4.2.3.9, RFC 5461, Linux's
icmp_err_convert): the errno it stands for, and whether it is hard (a
connection being opened gives up at once) or soft (remembered, reported only
if the connection times out). In a synchronized state no ICMP error aborts a
connection (RFC 5461 4.1, as Linux: an off-path attacker could otherwise kill
it with a guessed sequence number).

The IP layer hands TCP the error with its quote; the demux finds the
connection by the quoted 4-tuple and checks the quoted sequence number
(RFC 5927 4.1) before any of this is acted on.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ustack.wire.icmp import (
    ADMIN_PROHIBITED,
    DEST_UNREACH,
    FRAG_NEEDED,
    HOST_ISOLATED,
    HOST_PROHIBITED,
    HOST_UNKNOWN,
    HOST_UNREACH,
    HOST_UNREACH_FOR_TOS,
    NET_PROHIBITED,
    NET_UNKNOWN,
    NET_UNREACH,
    NET_UNREACH_FOR_TOS,
    PARAMETER_PROBLEM,
    PORT_UNREACH,
    PRECEDENCE_CUTOFF,
    PRECEDENCE_VIOLATION,
    PROTO_UNREACH,
    SOURCE_ROUTE_FAILED,
    TIME_EXCEEDED,
)

# Linux's tcp_base_mss: the MSS black-hole detection falls back to first
# (RFC 4821 7.2 suggests starting around 1024 bytes too).
BASE_MSS = 1024
# Linux's tcp_retries1: once this many retransmissions timed out, suspect the path.
BLACK_HOLE_TIMEOUTS = 3


class IcmpMeaning(NamedTuple):
    what: str  # for the trace
    error: str  # errno name
    hard: bool  # refuses a connection being opened (SYN_SENT)


# Destination Unreachable codes, as Linux's icmp_err_convert: 0, 1, 5 are soft
# (RFC 1122 4.2.3.9 MUST NOT abort), 2 and 3 hard (RFC 1122: "hard error
# conditions"); the later codes hard or soft as Linux has them.
_UNREACHABLE = {
    NET_UNREACH: IcmpMeaning("net unreachable", "ENETUNREACH", False),
    HOST_UNREACH: IcmpMeaning("host unreachable", "EHOSTUNREACH", False),
    PROTO_UNREACH: IcmpMeaning("protocol unreachable", "ENOPROTOOPT", True),
    PORT_UNREACH: IcmpMeaning("port unreachable", "ECONNREFUSED", True),
    FRAG_NEEDED: IcmpMeaning("fragmentation needed", "EMSGSIZE", False),
    SOURCE_ROUTE_FAILED: IcmpMeaning("source route failed", "EOPNOTSUPP", False),
    NET_UNKNOWN: IcmpMeaning("net unknown", "ENETUNREACH", True),
    HOST_UNKNOWN: IcmpMeaning("host unknown", "EHOSTDOWN", True),
    HOST_ISOLATED: IcmpMeaning("host isolated", "ENONET", True),
    NET_PROHIBITED: IcmpMeaning("net prohibited", "ENETUNREACH", True),
    HOST_PROHIBITED: IcmpMeaning("host prohibited", "EHOSTUNREACH", True),
    NET_UNREACH_FOR_TOS: IcmpMeaning("net unreachable for TOS", "ENETUNREACH", False),
    HOST_UNREACH_FOR_TOS: IcmpMeaning("host unreachable for TOS", "EHOSTUNREACH", False),
    ADMIN_PROHIBITED: IcmpMeaning("administratively prohibited", "EHOSTUNREACH", True),
    PRECEDENCE_VIOLATION: IcmpMeaning("precedence violation", "EHOSTUNREACH", True),
    PRECEDENCE_CUTOFF: IcmpMeaning("precedence cutoff", "EHOSTUNREACH", True),
}
_TIME_EXCEEDED = IcmpMeaning("time exceeded", "EHOSTUNREACH", False)
_PARAMETER_PROBLEM = IcmpMeaning("parameter problem", "EPROTO", False)


def meaning(type_: int, code: int) -> IcmpMeaning | None:
    """What an ICMP error (type, code) means to a connection, if anything."""
    if type_ == DEST_UNREACH:
        return _UNREACHABLE.get(code)
    if type_ == TIME_EXCEEDED:
        return _TIME_EXCEEDED
    if type_ == PARAMETER_PROBLEM:
        return _PARAMETER_PROBLEM
    return None


_QUOTED_TCP = struct.Struct("!HHI")  # source port, destination port, sequence number


def quoted_ports_and_seq(transport: bytes) -> tuple[int, int, int]:
    """The first 8 bytes of the quoted TCP header: (our port, the peer's port, SEQ)."""
    src_port, dst_port, sequence = _QUOTED_TCP.unpack_from(transport)
    return src_port, dst_port, sequence
