"""The two ends of the link every sans-I/O test talks over, defined once: the
stack and the Linux side, in the benchmarking ranges the lab uses
(198.18.0.0/15, RFC 2544; 2001:2::/48, RFC 5180), as text and as the ints the
stack takes (wire/address.py)."""

from __future__ import annotations

import ipaddress

US4_TEXT, PEER4_TEXT = "198.18.0.2", "198.18.0.1"
US6_TEXT, PEER6_TEXT = "2001:2::2", "2001:2::1"
US4, PEER4 = int(ipaddress.IPv4Address(US4_TEXT)), int(ipaddress.IPv4Address(PEER4_TEXT))
US6, PEER6 = int(ipaddress.IPv6Address(US6_TEXT)), int(ipaddress.IPv6Address(PEER6_TEXT))
