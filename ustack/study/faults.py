"""Faults on demand, at the TUN boundary: drop, delay, duplicate or mark the
packets that match a rule, so a student can watch TCP recover (a lost FIN
retransmitted after the RTO, a lost final ACK making the peer resend its FIN
into TIME_WAIT) or answer congestion (mark: CE on an ECN-capable packet, what
netem's `ecn` does with its losses; Not-ECT packets never match a mark rule).
IPv4 and IPv6 packets are matched alike: IPv6's TCP header is found past its
extension headers (RFC 8200 4), and its ECN field is in the Traffic Class.

A rule is written `ACTION[:KEY=VALUE,...]`, e.g. `drop:dir=out,flags=FIN,count=1`:

  dir      in (Linux -> ustack), out (ustack -> Linux) or both (default)
  flags    TCP flags that must all be set: FIN, SYN, RST, PSH, ACK, URG, or
           combinations like SYN+ACK (default: any packet, TCP or not)
  only     with flags: the flags must be exactly these (e.g. only=1 flags=ACK: pure ACKs)
  port     either TCP port of the segment
  host     either address of the packet, IPv4 or IPv6 (host=2001:2::1)
  family   4 or 6: only IPv4 or only IPv6 packets
  nth      act on the Nth matching packet only (1 = the first)
  count    act this many times, then the rule is spent (default: no limit)
  prob     probability of acting on a matching packet, 0..1 (default 1)
  delay    seconds, for ACTION=delay
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from typing import Any

from ustack.study.packet_view import view
from ustack.trace.vocabulary import FaultAction
from ustack.wire.address import format_address
from ustack.wire.address import parse_address
from ustack.wire.checksum import Buffer
from ustack.wire.checksum import internet_checksum
from ustack.wire.ipv4 import PROTO_TCP
from ustack.wire.tcp import ACK
from ustack.wire.tcp import FIN
from ustack.wire.tcp import PSH
from ustack.wire.tcp import RST
from ustack.wire.tcp import SYN
from ustack.wire.tcp import URG

ACTIONS = tuple(FaultAction)
DIRECTIONS = ("in", "out", "both")
_ECN_CE = 0b11  # the ECN field's bits in IPv4's second byte, and CE (RFC 3168 5)
# IPv6: the Traffic Class straddles bytes 0 and 1; its ECN bits are byte 1's 0x30 (RFC 8200 7).
_ECN_CE_IPV6 = _ECN_CE << 4
FAMILIES = (4, 6)
_PORTS = struct.Struct("!HH")
FLAG_NAMES = {"FIN": FIN, "SYN": SYN, "RST": RST, "PSH": PSH, "ACK": ACK, "URG": URG}


class FaultError(ValueError):
    """A rule that does not parse; the message says which part."""


@dataclass
class FaultRule:
    action: FaultAction
    direction: str = "both"
    flags: int = 0
    only: bool = False
    port: int | None = None
    host: int | None = None  # either address (wire/address.py's int, either family)
    family: int | None = None  # 4 or 6
    nth: int | None = None
    count: int | None = None
    probability: float = 1.0
    delay: float = 0.0
    id: int = 0
    matched: int = 0  # packets that matched so far
    applied: int = 0  # times the action was taken

    @property
    def spent(self) -> bool:
        return self.count is not None and self.applied >= self.count

    def describe(self) -> dict[str, Any]:
        flags = "+".join(name for name, bit in FLAG_NAMES.items() if self.flags & bit)
        return {
            "id": self.id,
            "action": self.action,
            "dir": self.direction,
            "flags": flags or None,
            "only": self.only,
            "port": self.port,
            "host": None if self.host is None else format_address(self.host),
            "family": self.family,
            "nth": self.nth,
            "count": self.count,
            "prob": self.probability,
            "delay": self.delay,
            "matched": self.matched,
            "applied": self.applied,
        }


def parse_rule(text: str) -> FaultRule:
    """`drop:dir=out,flags=FIN,count=1` -> FaultRule."""
    action, _, rest = text.strip().partition(":")
    fields: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise FaultError(f"{item!r}: want KEY=VALUE")
        fields[key.strip()] = value.strip()
    return rule_from_fields(action, fields)


def rule_from_fields(action: str, fields: dict[str, Any]) -> FaultRule:
    if action not in ACTIONS:
        raise FaultError(f"unknown action {action!r} (known: {', '.join(ACTIONS)})")
    rule = FaultRule(FaultAction(action))
    for key, value in fields.items():
        if value is None:
            continue
        text = str(value)
        try:
            if key == "dir":
                if text not in DIRECTIONS:
                    raise FaultError(f"dir={text}: want in, out or both")
                rule.direction = text
            elif key == "flags":
                rule.flags = _flags(text)
            elif key == "only":
                rule.only = text.lower() in ("1", "true", "yes")
            elif key == "port":
                rule.port = _bounded_int(text, 1, 65535, key)
            elif key == "host":
                rule.host = _address(text)
            elif key == "family":
                if text not in ("4", "6"):
                    raise FaultError(f"family={text}: want 4 or 6")
                rule.family = int(text)
            elif key == "nth":
                rule.nth = _bounded_int(text, 1, 1 << 31, key)
            elif key == "count":
                rule.count = _bounded_int(text, 1, 1 << 31, key)
            elif key == "prob":
                rule.probability = float(text)
                if not 0 <= rule.probability <= 1:
                    raise FaultError(f"prob={text}: want 0..1")
            elif key == "delay":
                rule.delay = float(text)
                if not 0 <= rule.delay <= 60:
                    raise FaultError(f"delay={text}: want 0..60 seconds")
            else:
                raise FaultError(f"unknown key {key!r}")
        except ValueError as exc:
            if isinstance(exc, FaultError):
                raise
            raise FaultError(f"{key}={text}: not a number") from None
    if rule.action is FaultAction.DELAY and rule.delay <= 0:
        raise FaultError("delay needs delay=SECONDS")
    if rule.only and not rule.flags:
        raise FaultError("only=1 needs flags=...")
    return rule


def _flags(text: str) -> int:
    bits = 0
    for name in text.upper().replace(",", "+").split("+"):
        if name not in FLAG_NAMES:
            raise FaultError(f"flags={text}: {name!r} is not one of {', '.join(FLAG_NAMES)}")
        bits |= FLAG_NAMES[name]
    return bits


def _address(text: str) -> int:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise FaultError(f"host={text}: {exc}") from None


def _bounded_int(text: str, low: int, high: int, key: str) -> int:
    value = int(text)
    if not low <= value <= high:
        raise FaultError(f"{key}={text}: want {low}..{high}")
    return value


@dataclass
class Verdict:
    """What becomes of one packet: sent `copies` times after `delay` seconds
    (0 copies: dropped), and the rule responsible, if any."""

    copies: int = 1
    delay: float = 0.0
    rule: FaultRule | None = None
    mark: bool = False  # set CE in the IP header (mark_ce)


PASS = Verdict()


@dataclass
class FaultInjector:
    rules: list[FaultRule] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)
    _next_id: int = 1

    def add(self, rule: FaultRule) -> FaultRule:
        rule = replace(rule, id=self._next_id, matched=0, applied=0)
        self._next_id += 1
        self.rules.append(rule)
        return rule

    def remove(self, rule_id: int | None = None) -> int:
        """Remove one rule, or all (None); how many went."""
        before = len(self.rules)
        self.rules = [r for r in self.rules if rule_id is not None and r.id != rule_id]
        return before - len(self.rules)

    def judge(self, direction: str, packet: Buffer) -> Verdict:
        """The first live rule that matches and fires decides."""
        if not self.rules:
            return PASS
        for rule in self.rules:
            if rule.spent or not _matches(rule, direction, packet):
                continue
            rule.matched += 1
            if rule.nth is not None and rule.matched != rule.nth:
                continue
            if rule.probability < 1 and self.rng.random() >= rule.probability:
                continue
            rule.applied += 1
            if rule.action is FaultAction.DROP:
                return Verdict(0, 0.0, rule)
            if rule.action is FaultAction.DUPLICATE:
                return Verdict(2, 0.0, rule)
            if rule.action is FaultAction.MARK:
                return Verdict(1, 0.0, rule, mark=True)
            return Verdict(1, rule.delay, rule)
        return PASS


def _ecn_capable(packet: Buffer) -> bool:
    """ECT(0), ECT(1) or CE in the packet's ECN field, either family."""
    if len(packet) < 20:
        return False
    if packet[0] >> 4 == 6:
        return bool(packet[1] & _ECN_CE_IPV6)
    return bool(packet[1] & _ECN_CE)


def mark_ce(packet: Buffer) -> bytearray:
    """A copy of the packet with CE in its ECN field (RFC 3168 5). IPv4: the
    header checksum updated (RFC 1624: the sum of the header is done again,
    it is 20 to 60 bytes). IPv6 has no header checksum, and the TCP pseudo-
    header does not hold the Traffic Class (RFC 8200 8.1)."""
    marked = bytearray(packet)
    if marked[0] >> 4 == 6:
        marked[1] |= _ECN_CE_IPV6
        return marked
    marked[1] |= _ECN_CE
    ihl = (marked[0] & 0x0F) * 4
    marked[10:12] = b"\0\0"
    marked[10:12] = internet_checksum(marked[:ihl]).to_bytes(2, "big")
    return marked


def _matches(rule: FaultRule, direction: str, packet: Buffer) -> bool:
    if rule.direction != "both" and rule.direction != direction:
        return False
    if rule.action is FaultAction.MARK and not _ecn_capable(packet):
        return False  # only an ECN-capable packet can be marked (a router drops the rest)
    if not rule.flags and rule.port is None and rule.host is None and rule.family is None:
        return True
    seen = view(packet)
    if seen is None:
        return False
    if rule.family is not None and seen.version != rule.family:
        return False
    if rule.host is not None and rule.host not in (seen.src, seen.dst):
        return False
    if not rule.flags and rule.port is None:
        return True
    # Flags and ports are TCP's: the header must be here whole enough (a
    # later fragment or a cut chain has none to read).
    tcp = seen.upper
    if seen.protocol != PROTO_TCP or tcp is None or len(packet) < tcp + 14:
        return False
    src_port, dst_port = _PORTS.unpack_from(packet, tcp)
    if rule.port is not None and rule.port not in (src_port, dst_port):
        return False
    flags = packet[tcp + 13]
    if rule.only:
        return flags & 0x3F == rule.flags
    return flags & rule.flags == rule.flags
