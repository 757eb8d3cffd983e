"""Everything that shows addresses speaks IPv6 (issue 15 item 6): the trace's
records and writers, the readers (load, ladder, explain), the trace filter,
the fault rules, the pcap (read back by tshark) and the peer-state parser.

A connection's trace over IPv6 is the IPv4 scenario of test_ladder.py with
its addresses replaced: every line that names an address must then name the
IPv6 one, in RFC 5952 text, with brackets around it beside a port.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet import TCP
from scapy.layers.inet import UDP
from scapy.layers.inet6 import ICMPv6EchoRequest
from scapy.layers.inet6 import IPv6
from scapy.layers.inet6 import IPv6ExtHdrDestOpt
from scapy.layers.inet6 import IPv6ExtHdrFragment
from scapy.layers.inet6 import IPv6ExtHdrHopByHop
from test_ladder import lost_fin_with_peer_states
from test_ladder import passive_close
from test_ladder import write_trace

from ustack.cli.clients import ss_lines
from ustack.cli.clients import stats_lines
from ustack.counters import Counters
from ustack.daemon.reports import connection_row
from ustack.daemon.reports import fault_event
from ustack.daemon.reports import listening_endpoints
from ustack.linux.sock_diag import canonical_address
from ustack.linux.tracefs import parse_line
from ustack.net.ipv6 import IPv6Layer
from ustack.stack import Stack
from ustack.study.explain import explain
from ustack.study.faults import FaultError
from ustack.study.faults import FaultInjector
from ustack.study.faults import Verdict
from ustack.study.faults import mark_ce
from ustack.study.faults import parse_rule
from ustack.study.ladder import render_ascii
from ustack.study.load import choose_connection
from ustack.study.load import connections
from ustack.study.load import load_trace
from ustack.study.packet_view import view
from ustack.study.sinks import PcapWriter
from ustack.study.sinks import TextWriter
from ustack.study.sinks import TraceFilter
from ustack.trace.records import NewConnection
from ustack.trace.records import PeerStateChange
from ustack.trace.records import SegmentEvent
from ustack.trace.records import TraceEvent
from ustack.trace.records import endpoint
from ustack.trace.records import four_tuple_text
from ustack.wire.address import parse_address

US4, PEER4 = "198.18.0.2", "198.18.0.1"
US6, PEER6 = "2001:2::2", "2001:2::1"
SIX = {US4: US6, PEER4: PEER6}


def over_ipv6(events: list[TraceEvent]) -> list[TraceEvent]:
    """The same events, as if the connection had been made over IPv6."""
    moved: list[TraceEvent] = []
    for event in events:
        if isinstance(event, NewConnection | SegmentEvent | PeerStateChange):
            event = dataclasses.replace(event, local=SIX[event.local], remote=SIX[event.remote])
        moved.append(event)
    return moved


def ipv6_trace(tmp_path: Path, scenario: object = passive_close) -> Path:
    made = scenario()  # type: ignore[operator]
    events = made if isinstance(made, list) else made.trace
    return write_trace(tmp_path / "v6.jsonl", over_ipv6(events))


# ---- records and writers -------------------------------------------------------------------


def test_an_endpoint_brackets_an_ipv6_address_as_ss_does() -> None:
    assert endpoint(US4, 80) == "198.18.0.2:80"
    assert endpoint(US6, 80) == "[2001:2::2]:80"
    assert four_tuple_text(US6, 80, PEER6, 41088) == "[2001:2::2]:80 [2001:2::1]:41088"


def test_jsonl_writes_ipv6_addresses_as_text_and_the_tuple_bracketed(tmp_path: Path) -> None:
    lines = ipv6_trace(tmp_path).read_text().splitlines()
    assert json.loads(lines[0]) == {"type": "header", "schema": 5}
    records = [json.loads(line) for line in lines[1:]]
    opened = next(r for r in records if r["type"] == "connection")
    assert (opened["local"], opened["remote"]) == (US6, PEER6)
    assert opened["tuple"] == "[2001:2::2]:80 [2001:2::1]:40000"
    tuples = {r["tuple"] for r in records if r.get("conn") == 1 and "tuple" in r}
    assert tuples == {"[2001:2::2]:80 [2001:2::1]:40000"}


def test_text_trace_lines_name_ipv6_ends_in_brackets() -> None:
    stream = io.StringIO()
    writer = TextWriter(stream, colour=False)
    for event in over_ipv6(lost_fin_with_peer_states()):
        writer(event)
    lines = stream.getvalue().splitlines()
    assert any("new   [2001:2::2]:80 <-> [2001:2::1]:40000 (passive open)" in x for x in lines)
    syn = next(x for x in lines if " in " in x and " S " in x)
    assert "[2001:2::1]:40000 > [2001:2::2]:80" in syn
    assert any("peer  [2001:2::1]:40000 (Linux) SYN_SENT -> ESTABLISHED" in x for x in lines)
    assert not any("198.18." in x for x in lines)


# ---- the readers: load, ladder, explain ----------------------------------------------------


def test_loading_an_ipv6_trace_keeps_its_addresses_and_lists_its_ends(tmp_path: Path) -> None:
    path = ipv6_trace(tmp_path)
    records = load_trace(path)
    segment = next(r for r in records if r["type"] == "segment")
    assert (segment["local"], segment["remote"]) == (US6, PEER6)
    [summary] = connections(records)
    assert summary.ends == (US6, 80, PEER6, 40000)
    assert (summary.peer, summary.us) == ("[2001:2::1]:40000", "[2001:2::2]:80")
    assert "[2001:2::1]:40000 <-> [2001:2::2]:80" in summary.describe()
    chosen = choose_connection(records, None)
    assert chosen.conn == 1


def test_the_ladder_of_an_ipv6_connection_names_its_ends(tmp_path: Path) -> None:
    ladder = render_ascii(load_trace(ipv6_trace(tmp_path, lost_fin_with_peer_states)))
    assert ladder.splitlines()[0] == (
        "connection 1: Linux peer [2001:2::1]:40000 <-> ustack [2001:2::2]:80 (passive open)"
    )
    # Same arrows and states as over IPv4: the family changes only the names.
    ipv4 = render_ascii(lost_fin_with_peer_states())
    assert ladder.splitlines()[1:] == ipv4.splitlines()[1:]


def test_explain_names_the_ipv6_peer_and_stack(tmp_path: Path) -> None:
    steps = explain(load_trace(ipv6_trace(tmp_path)))
    assert steps[0].startswith(
        "1. The Linux peer ([2001:2::1]:40000) asks to open a connection to ustack "
        "([2001:2::2]:80): SYN"
    )


# ---- packets: the view, the trace filter, the pcap -----------------------------------------


def tcp6(flags: str = "S", sport: int = 40000, dport: int = 80, *ext: object) -> bytes:
    packet = IPv6(src=PEER6, dst=US6)
    for header in ext:
        packet = packet / header
    return bytes(packet / TCP(sport=sport, dport=dport, flags=flags, seq=1000))


def test_the_packet_view_walks_ipv6_extension_headers_to_tcp() -> None:
    plain = view(tcp6())
    assert plain is not None and (plain.version, plain.protocol, plain.upper) == (6, 6, 40)
    assert plain.src == int.from_bytes(bytes.fromhex("20010002" + "0" * 23 + "1"), "big")
    chained = tcp6("S", 40000, 80, IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt())
    seen = view(chained)
    assert seen is not None and (seen.protocol, seen.upper) == (6, 56)
    assert seen.ports(chained) == (40000, 80)
    later = tcp6("S", 40000, 80, IPv6ExtHdrFragment(offset=100, m=0))
    seen = view(later)
    assert seen is not None and seen.protocol == 6 and seen.upper is None
    assert seen.ports(later) is None
    assert view(b"\x60" + bytes(10)) is None  # shorter than IPv6's fixed header


def test_the_trace_filter_keeps_ipv6_packets_by_address_and_port() -> None:
    packet = tcp6("S", 40000, 80, IPv6ExtHdrDestOpt())
    assert TraceFilter(frozenset({80})).matches_packet(packet)
    assert not TraceFilter(frozenset({443})).matches_packet(packet)
    # The address as given is made RFC 5952 text, as the records hold it.
    assert TraceFilter(addresses=frozenset({"2001:0002:0::0001"})).matches_packet(packet)
    assert not TraceFilter(addresses=frozenset({"2001:2::9"})).matches_packet(packet)
    assert TraceFilter(addresses=frozenset({"2001:2::1"})).addresses == {"2001:2::1"}
    ipv4 = bytes(IP(src=PEER4, dst=US4) / TCP(sport=40000, dport=80))
    assert not TraceFilter(addresses=frozenset({PEER6})).matches_packet(ipv4)
    assert TraceFilter(addresses=frozenset({PEER4})).matches_packet(ipv4)


def test_tshark_reads_ipv6_tcp_from_our_pcap(tmp_path: Path) -> None:
    """LINKTYPE_RAW carries both families: Wireshark's dissector tells them
    apart by the version nibble, in one file."""
    tshark = shutil.which("tshark")
    assert tshark is not None, "tshark is required (CI installs it)"
    path = tmp_path / "both.pcap"
    with path.open("wb") as stream:
        writer = PcapWriter(stream)
        writer("in", tcp6("S", 40000, 80), 0.0)
        writer("out", bytes(IPv6(src=US6, dst=PEER6) / TCP(sport=80, dport=40000, flags="SA")), 0.0)
        writer("in", bytes(IP(src=PEER4, dst=US4) / TCP(sport=40001, dport=80, flags="S")), 0.0)
    fields = ["ip.version", "ipv6.src", "ipv6.dst", "ip.src", "tcp.srcport", "tcp.dstport",
              "tcp.flags.syn", "tcp.flags.ack", "_ws.expert.message"]  # fmt: skip
    out = subprocess.run(
        [tshark, "-r", str(path), "-T", "fields", "-E", "separator=|",
         *(arg for name in fields for arg in ("-e", name))],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    rows = [line.split("|") for line in out.splitlines()]
    assert [row[:8] for row in rows] == [
        ["6", PEER6, US6, "", "40000", "80", "1", "0"],
        ["6", US6, PEER6, "", "80", "40000", "1", "1"],
        ["4", "", "", PEER4, "40001", "80", "1", "0"],
    ]
    assert not any("checksum" in row[8].lower() for row in rows)  # scapy's sums are right


def test_tshark_reads_the_ipv6_layers_own_replies_from_our_pcap(tmp_path: Path) -> None:
    """The pcap as the daemon writes it (the tap sees what comes in and what
    goes out): an echo request and its reply, a UDP probe and its ICMPv6
    port unreachable, the replies' checksums verified by Wireshark."""
    tshark = shutil.which("tshark")
    assert tshark is not None, "tshark is required (CI installs it)"
    path = tmp_path / "icmpv6.pcap"
    with path.open("wb") as stream:
        ip = IPv6Layer(parse_address(US6), lambda packet: True, Counters())
        ip.tap = PcapWriter(stream)
        ip.receive(bytes(IPv6(src=PEER6, dst=US6) / ICMPv6EchoRequest(id=7, seq=1)), 0.0)
        ip.receive(bytes(IPv6(src=PEER6, dst=US6) / UDP(sport=5000, dport=9999) / b"?"), 0.0)
    fields = ["ipv6.src", "ipv6.dst", "icmpv6.type", "icmpv6.code", "icmpv6.checksum.status"]
    out = subprocess.run(
        [tshark, "-r", str(path), "-T", "fields", "-E", "separator=|",
         *(arg for name in fields for arg in ("-e", name))],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    rows = [line.split("|") for line in out.splitlines()]
    good = "1"  # Wireshark's checksum status: 0 bad, 1 good, 2 not verified
    assert rows[1] == [US6, PEER6, "129", "0", good]  # echo reply (RFC 4443 4.2)
    assert rows[2][:2] == [PEER6, US6] and rows[2][2] == ""  # the UDP probe
    # Destination unreachable, port unreachable (RFC 4443 3.1), quoting the probe.
    assert rows[3][0].split(",")[0] == US6 and rows[3][2:] == ["1", "4", good]


# ---- fault rules ---------------------------------------------------------------------------


def test_fault_rules_match_ipv6_tcp_by_flags_port_and_host() -> None:
    syn = tcp6("S", 40000, 80, IPv6ExtHdrHopByHop())
    ack = tcp6("A", 40000, 80)
    for text, matched in [
        ("drop:flags=SYN", [True, False]),
        ("drop:flags=ACK,only=1", [False, True]),
        ("drop:port=80", [True, True]),
        ("drop:port=81", [False, False]),
        (f"drop:host={PEER6}", [True, True]),
        ("drop:host=2001:2::9", [False, False]),
        ("drop:family=6", [True, True]),
        ("drop:family=4", [False, False]),
        (f"drop:host={PEER6},flags=SYN,dir=in", [True, False]),
    ]:
        injector = FaultInjector()
        injector.add(parse_rule(text))
        verdicts = [injector.judge("in", packet).copies == 0 for packet in (syn, ack)]
        assert verdicts == matched, text


def test_fault_rules_on_host_and_family_keep_to_their_family() -> None:
    ipv4 = bytes(IP(src=PEER4, dst=US4) / TCP(sport=40000, dport=80, flags="S"))
    injector = FaultInjector()
    injector.add(parse_rule(f"drop:host={PEER4}"))
    assert injector.judge("in", ipv4).copies == 0
    assert injector.judge("in", tcp6()).copies == 1
    rule = parse_rule("drop:host=2001:0002::0001,family=6")
    assert rule.describe()["host"] == PEER6 and rule.describe()["family"] == 6


@pytest.mark.parametrize("text", ["drop:host=2001:2::zz", "drop:host=::ffff:1.2.3.4",
                                  "drop:family=5"])  # fmt: skip
def test_bad_ipv6_fault_rules_say_why(text: str) -> None:
    with pytest.raises(FaultError, match=r"host=|family="):
        parse_rule(text)


def test_a_later_ipv6_fragment_has_no_tcp_header_to_match() -> None:
    injector = FaultInjector()
    injector.add(parse_rule("drop:port=80"))
    later = tcp6("S", 40000, 80, IPv6ExtHdrFragment(offset=100, m=0))
    assert injector.judge("in", later).copies == 1


def test_a_mark_rule_sets_ce_in_the_ipv6_traffic_class_of_ect_packets_only() -> None:
    injector = FaultInjector()
    injector.add(parse_rule("mark:dir=in"))
    not_ect = bytes(IPv6(src=PEER6, dst=US6, tc=0) / TCP())
    ect0 = bytes(IPv6(src=PEER6, dst=US6, tc=0b1011_1010) / TCP())  # DSCP 46, ECT(0)
    assert not injector.judge("in", not_ect).mark
    assert injector.judge("in", ect0).mark
    marked = IPv6(mark_ce(ect0))
    assert marked.tc == 0b1011_1011  # CE, the DSCP kept
    assert bytes(marked)[2:] == ect0[2:]  # nothing else changed (no header checksum)


# ---- peer states ---------------------------------------------------------------------------

# As the tracepoint prints an AF_INET6 socket (include/trace/events/sock.h: %pI6c).
LINE6 = (
    "            curl-4242    [001] ..s2.  2345.068576: inet_sock_set_state: family=AF_INET6 "
    "protocol=IPPROTO_TCP sport=52044 dport=80 saddr=0.0.0.0 daddr=0.0.0.0 "
    "saddrv6=2001:2::1 daddrv6=2001:2::2 oldstate=TCP_SYN_SENT newstate=TCP_ESTABLISHED"
)
# An AF_INET6 socket talking to an IPv4 address: v4-mapped v6 addresses.
LINE_MAPPED = (
    "          python-4243    [000] ..s2.  2345.070000: inet_sock_set_state: family=AF_INET6 "
    "protocol=IPPROTO_TCP sport=52045 dport=80 saddr=198.18.0.1 daddr=198.18.0.2 "
    "saddrv6=::ffff:198.18.0.1 daddrv6=::ffff:198.18.0.2 oldstate=TCP_ESTABLISHED "
    "newstate=TCP_FIN_WAIT1"
)


def test_peer_states_parse_an_ipv6_tracepoint_line() -> None:
    change = parse_line(LINE6, [US4, US6])
    assert change is not None
    assert (change.linux, change.linux_port, change.stack, change.stack_port) == (
        PEER6, 52044, US6, 80,
    )  # fmt: skip
    assert (change.old, change.new, change.at) == ("SYN_SENT", "ESTABLISHED", 2345.068576)
    assert parse_line(LINE6, US4) is None  # not ours when the stack has no IPv6
    assert parse_line(LINE6.replace("daddrv6=2001:2::2", "daddrv6=2001:2::9"), [US4, US6]) is None


def test_peer_states_take_a_v4_mapped_socket_as_ipv4() -> None:
    change = parse_line(LINE_MAPPED, [US4, US6])
    assert change is not None and (change.linux, change.stack) == (PEER4, US4)
    assert (change.old, change.new) == ("ESTABLISHED", "FIN_WAIT_1")
    assert canonical_address("2001:0002:0000::0001") == PEER6
    assert canonical_address("::ffff:198.18.0.1") == PEER4


# ---- ss, stats, the control replies --------------------------------------------------------


def test_ss_shows_both_families_as_ss_does() -> None:
    row = {"id": 3, "state": "ESTABLISHED", "recv_queue": 0, "send_queue": 0,
           "snd_una": 1, "snd_nxt": 1, "rcv_nxt": 79, "snd_wnd": 64256, "rto": 0.204,
           "pmtu": 1500, "mss": 1440, "timers": {}}  # fmt: skip
    reply = {
        "listening": ["198.18.0.2:80", "[2001:2::2]:80"],
        "connections": [
            {**row, "local": "198.18.0.2:80", "remote": "198.18.0.1:41088"},
            {**row, "id": 4, "local": "[2001:2::2]:80", "remote": "[2001:2::1]:52044"},
        ],
    }
    lines = ss_lines(reply)
    assert lines[1].split() == ["LISTEN", "0", "0", "198.18.0.2:80", "0.0.0.0:*"]
    assert lines[2].split() == ["LISTEN", "0", "0", "[2001:2::2]:80", "[::]:*"]
    assert lines[4].split()[3:6] == ["[2001:2::2]:80", "[2001:2::1]:52044", "#4"]
    # A long IPv6 end widens the columns rather than pushing the details out of line.
    long_end = "[2001:2:0:1234:5678:9abc:def0:1]:65535"
    wide = ss_lines({**reply, "connections": [{**row, "local": long_end, "remote": long_end}]})
    assert wide[0].index("Peer") == wide[-1].index(long_end, len(wide[-1]) // 3)


def test_stats_lists_ipv4_then_ipv6_counters_then_the_rest() -> None:
    counters = {"tcp.in": 9, "icmp6.echo": 2, "ip.in": 7, "ip6.in": 5, "icmp.echo": 1,
                "app.connections": 1, "ip6.drop.not-for-us": 1,
                "udp6.out.port-unreachable": 1, "udp.drop.bad-checksum": 1}  # fmt: skip
    names = [line.split()[0] for line in stats_lines(counters)]
    assert names == ["icmp.echo", "ip.in",
                     "icmp6.echo", "ip6.drop.not-for-us", "ip6.in", "udp6.out.port-unreachable",
                     "app.connections", "tcp.in", "udp.drop.bad-checksum"]  # fmt: skip


def test_control_rows_carry_ipv6_ends_as_text() -> None:
    assert listening_endpoints([80, 7], parse_address(US4), parse_address(US6)) == [
        "198.18.0.2:7", "198.18.0.2:80", "[2001:2::2]:7", "[2001:2::2]:80",
    ]  # fmt: skip
    stack = Stack(parse_address(US4), lambda packet: True)
    conn = stack.connect(parse_address(PEER4), 80, 0.0)  # any connection will do for its row
    key = (parse_address(PEER6), 52044, 80)
    row = connection_row(parse_address(US4), key, conn, 0.0, parse_address(US6))
    assert (row["local"], row["remote"]) == ("[2001:2::2]:80", "[2001:2::1]:52044")
    row4 = connection_row(parse_address(US4), (parse_address(PEER4), 41088, 80), conn, 0.0)
    assert (row4["local"], row4["remote"]) == ("198.18.0.2:80", "198.18.0.1:41088")
    json.dumps(row)  # the control protocol sends it as JSON: all text and numbers


def test_a_fault_event_of_an_ipv6_segment_names_its_ends_and_fields() -> None:
    stack = Stack(parse_address(US4), lambda packet: True)
    rule = FaultInjector().add(parse_rule("drop:family=6"))
    packet = tcp6("S", 52044, 80, IPv6ExtHdrDestOpt())
    event = fault_event(stack, "in", packet, Verdict(0, 0.0, rule), 1.5)
    assert (event.local, event.local_port, event.remote, event.remote_port) == (
        US6, 80, PEER6, 52044,
    )  # fmt: skip
    assert (event.flags, event.seq, event.length, event.conn) == ("S", 1000, 0, None)
    out = bytes(IPv6(src=US6, dst=PEER6) / TCP(sport=80, dport=52044, flags="SA") / b"hi")
    event = fault_event(stack, "out", out, Verdict(0, 0.0, rule), 1.5)
    assert (event.local, event.remote, event.flags, event.length) == (US6, PEER6, "S.", 2)


def test_an_ipv6_packet_from_the_unspecified_address_is_named_so() -> None:
    """The kernel's MLD reports may leave from :: (RFC 3810 5.2.13): by the
    int convention 0 is IPv4's 0.0.0.0, so the text goes by the packet's version."""
    mld = bytes(IPv6(src="::", dst="ff02::16") / TCP(sport=1, dport=2))
    seen = view(mld)
    assert seen is not None and (seen.text(seen.src), seen.text(seen.dst)) == ("::", "ff02::16")
    stack = Stack(parse_address(US4), lambda packet: True)
    rule = FaultInjector().add(parse_rule("delay:dir=in,delay=0.01"))
    event = fault_event(stack, "in", mld, Verdict(1, 0.01, rule), 0.0)
    assert (event.local, event.remote) == ("ff02::16", "::")
