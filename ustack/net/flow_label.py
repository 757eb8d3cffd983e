"""IPv6 flow labels (RFC 6437): one per flow, from a keyed hash.

RFC 6437 3: a source SHOULD set a flow label per flow, uniformly distributed
and not predictable from the ones before (so a keyed hash of the flow's
5-tuple, as Linux's ip6_make_flowlabel with auto_flowlabels), 20 bits, never 0
(0 means "no label"). The same flow always gets the same label, so a
connection's packets stay on one path through load balancers (RFC 6438).
"""

from __future__ import annotations

import hashlib
import secrets

FLOW_LABEL_MASK = 0xFFFFF
_MAX_REMEMBERED = 4096  # flows kept; beyond, the table starts over


class FlowLabels:
    """label(dst, next_header, ports) -> the flow label, 1..0xFFFFF."""

    __slots__ = ("_key", "_labels", "_source")

    def __init__(self, source: int, key: bytes | None = None) -> None:
        self._source = source.to_bytes(16, "big")
        self._key = key or secrets.token_bytes(16)
        self._labels: dict[tuple[int, int, int], int] = {}

    def label(self, dst: int, next_header: int, ports: int = 0) -> int:
        """`ports`: source port << 16 | destination port, when the upper
        layer has them (TCP, UDP), else 0."""
        flow = (dst, next_header, ports)
        label = self._labels.get(flow)
        if label is None:
            label = self._hash(flow)
        return label

    def _hash(self, flow: tuple[int, int, int]) -> int:
        dst, next_header, ports = flow
        digest = hashlib.blake2b(
            self._source + dst.to_bytes(16, "big") + bytes((next_header,)) + ports.to_bytes(4),
            key=self._key,
            digest_size=4,
        ).digest()
        label = int.from_bytes(digest, "big") & FLOW_LABEL_MASK or 1
        labels = self._labels
        if len(labels) >= _MAX_REMEMBERED:
            labels.clear()
        labels[flow] = label
        return label
