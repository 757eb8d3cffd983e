"""Bytes on the wire: the headers and the Internet checksum, below every other layer.

    ipv4       the IPv4 header and the protocol numbers it carries
    tcp        the TCP header and its options
    udp        the UDP header
    icmp       the ICMP header, its types and codes
    codec      what those four share: construct parse/build with our errors
    checksum   the Internet checksum, computed by the C core (cffi: _checksum)
    checksum_ref  the same in pure Python, straight from RFC 1071, for tests
    errors     MalformedPacket, with the stable reasons the drop counters use

Each header module holds the construct schema that describes its header (the
single description, read next to the RFC diagram) and, next to it, the struct
format its per-packet parse and build use, which the unit tests check against
the schema. Nothing here imports a layer above (net, tcp, study, ...).
"""
