"""The pcapng trace: packets with the stack's reasons as packet comments.

A scripted session of the real core (tests/tcpscript.py, a virtual clock)
feeds one PcapngWriter as both its packet tap and its tracer: a passive
open, data whose first transmission is lost (the RTO resends it), a SYN to
a closed port (RST). tshark (Wireshark's dissector, CI installs it) must
read the file, decode every frame as TCP over IPv4, and show the reasons
beside the frames: the SYN with its state change and rule, the
retransmission with the timeout's decision, the RST with its rule. scapy's
pcapng reader is a second, independent reader. An IPv6 packet written by the
same writer decodes as IPv6 (LINKTYPE_RAW carries both).
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet import TCP
from scapy.layers.inet6 import IPv6
from scapy.utils import PcapNgReader
from tcpscript import OUR_ISS
from tcpscript import PEER_ISS
from tcpscript import TcpScript

from ustack.study.pcapng import NOTE_RULES
from ustack.study.pcapng import PcapngWriter
from ustack.study.pcapng import enhanced_packet_block
from ustack.study.pcapng import pcapng_header
from ustack.study.pcapng import segment_comment
from ustack.study.sinks import TraceRotation
from ustack.study.sinks import TraceSinks
from ustack.study.sinks import TraceSpec
from ustack.study.sinks import format_for
from ustack.trace.records import SegmentEvent
from ustack.trace.records import TraceEvent
from ustack.trace.vocabulary import SegmentNote

CLOSED_PORT_SPORT = 40002


class RecordedScript(TcpScript):
    """A TcpScript whose trace and packet tap also go to a PcapngWriter."""

    def __init__(self, stream: io.BytesIO) -> None:
        # The stamps: the virtual clock, so that frames are in the script's times.
        self.writer = PcapngWriter(stream, clock=lambda: 1_700_000_000 + self.now)
        super().__init__(listen=80)
        self.stack.ip.tap = self.writer.tap

    def _on_trace(self, event: TraceEvent) -> None:
        super()._on_trace(event)
        self.writer(event)


def run_session(stream: io.BytesIO) -> RecordedScript:
    t = RecordedScript(stream)
    t.at(0.010).send("S", seq=PEER_ISS, mss=1460)
    t.expect("S.", seq=OUR_ISS, ack=PEER_ISS + 1)
    t.at(0.020).send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 1)
    t.at(0.030).write(b"hello")
    t.expect("P.", seq=OUR_ISS + 1, payload=b"hello")  # lost: no ACK comes
    t.at(1.500)  # the RTO (1 s minimum) fires: "hello" again
    t.expect("P.", seq=OUR_ISS + 1, payload=b"hello")
    t.at(1.510).send(".", seq=PEER_ISS + 1, ack=OUR_ISS + 6)
    t.at(1.520).send("S", seq=9000, sport=CLOSED_PORT_SPORT, dport=9)
    t.expect("R.", seq=0, ack=9001)
    t.writer.settle()
    return t


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stream = io.BytesIO()
    run_session(stream)
    path = tmp_path_factory.mktemp("pcapng") / "session.pcapng"
    path.write_bytes(stream.getvalue())
    return path


def tshark_rows(path: Path, *fields: str, display: str = "") -> list[list[str]]:
    assert shutil.which("tshark"), "tshark is needed (Debian: apt-get install tshark)"
    args = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=\t",
            "-E", "occurrence=a", "-E", "aggregator=|"]  # fmt: skip
    if display:
        args += ["-Y", display]
    for name in fields:
        args += ["-e", name]
    result = subprocess.run(args, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return [line.split("\t") for line in result.stdout.decode().splitlines()]


def test_every_frame_decodes_as_tcp_over_ipv4_in_order(capture: Path) -> None:
    rows = tshark_rows(capture, "frame.number", "ip.version", "tcp.flags.str", "tcp.dstport")
    flags = [(row[1], row[2].strip("·"), row[3]) for row in rows]
    # SYN, SYN-ACK, ACK, data, the data again, its ACK, the SYN to port 9 and its RST.
    assert [f[0] for f in flags] == ["4"] * 8
    assert [f[1].replace("·", "") for f in flags] == [
        "S", "AS", "A", "AP", "AP", "A", "S", "AR",
    ]  # fmt: skip
    assert flags[6][2] == "9"


def test_every_frame_carries_its_reasons(capture: Path) -> None:
    rows = tshark_rows(capture, "frame.number", "frame.comment")
    assert len(rows) == 8
    comments = {int(number): text.split("|") for number, text in rows}
    assert all(comments[n] != [""] for n in comments), comments


def test_the_syn_shows_its_state_change_and_rule(capture: Path) -> None:
    rows = tshark_rows(capture, "frame.comment", display="tcp.flags == 0x002 && tcp.dstport == 80")
    (syn,) = rows
    lines = syn[0].split("|")
    assert lines[0] == "ustack #1 in: LISTEN -> SYN_RECEIVED"
    assert any(
        line.startswith("#1 state LISTEN -> SYN_RECEIVED (RCV_SYN; RFC 9293 3.10.7.2:")
        for line in lines
    ), lines


def test_the_retransmission_shows_the_timeout_and_its_rule(capture: Path) -> None:
    rows = tshark_rows(capture, "frame.number", "frame.comment", display="tcp.len == 5")
    (first, again) = rows
    assert "retransmission" not in first[1]
    lines = again[1].split("|")
    assert "#1 timer retransmit fired" in lines
    assert any(
        line.startswith("#1 note retransmission timeout #1: resend from SND.UNA")
        and line.endswith("(RFC 6298 5.4-5.6)")
        for line in lines
    ), lines
    assert "ustack #1 out: ESTABLISHED (retransmission)" in lines
    (tcb,) = [line for line in lines if line.startswith("ustack tcb: ")]
    assert "rto 2000.0 ms" in tcb  # doubled by the timeout (RFC 6298 5.5)
    # ... and tshark's own analysis agrees that it is one.
    flagged = tshark_rows(capture, "frame.number", display="tcp.analysis.retransmission")
    assert flagged == [[again[0]]]


def test_the_rst_shows_its_rule(capture: Path) -> None:
    rows = tshark_rows(capture, "frame.comment", display="tcp.flags.reset == 1")
    (rst,) = rows
    assert rst[0].split("|") == ["ustack #- out: CLOSED (RST: no connection; RFC 9293 3.10.7.1)"]
    (syn,) = tshark_rows(capture, "frame.comment", display="tcp.dstport == 9")
    assert syn[0] == "ustack #- in: CLOSED"


def test_directions_are_in_the_flags(capture: Path) -> None:
    rows = tshark_rows(capture, "ip.src", "frame.comment")
    for src, comment in rows:
        direction = comment.split("|")[0].split()[2]
        assert direction == ("in:" if src == "198.18.0.1" else "out:"), (src, comment)
    # scapy, a second reader: the packets whole, the same comments, epb_flags' direction.
    with PcapNgReader(str(capture)) as reader:
        packets = list(reader)
    assert len(packets) == len(rows)
    for packet, (src, comment) in zip(packets, rows, strict=True):
        assert IP(bytes(packet))[IP].src == src
        assert [c.decode() for c in packet.comments] == comment.split("|")
        assert packet.direction == (1 if src == "198.18.0.1" else 2)


def test_ipv6_frames_decode_as_ipv6(tmp_path: Path) -> None:
    packet = bytes(IPv6(src="2001:2::1", dst="2001:2::2") / TCP(sport=40000, dport=80, flags="S"))
    path = tmp_path / "v6.pcapng"
    path.write_bytes(
        pcapng_header() + enhanced_packet_block(packet, 1.5, "in", ["ustack #1 in: LISTEN"])
    )
    rows = tshark_rows(path, "ipv6.src", "tcp.dstport", "frame.comment", "frame.time_epoch")
    assert rows == [["2001:2::1", "80", "ustack #1 in: LISTEN", "1.500000000"]]


def test_blocks_are_whole_and_aligned() -> None:
    header = pcapng_header()
    block = enhanced_packet_block(b"\x45" + bytes(20), 0.0, "out", ["é", ""])
    for data in (header[:28], block):
        assert len(data) % 4 == 0
    (length,) = struct.unpack_from("<I", block, 4)
    assert length == len(block) == struct.unpack_from("<I", block, len(block) - 4)[0]
    long_comment = enhanced_packet_block(b"", 0.0, "in", ["x" * 70000])
    assert len(long_comment) % 4 == 0  # a comment past 65535 bytes is cut, not broken


def test_every_note_but_retransmission_and_none_names_its_rule() -> None:
    left = set(SegmentNote) - set(NOTE_RULES)
    assert left == {SegmentNote.NONE, SegmentNote.RETRANSMISSION, SegmentNote.RST_UNACCEPTABLE_ACK}
    base = dict(time=0.0, conn=3, direction="out", local="198.18.0.2", local_port=80,
                remote="198.18.0.1", remote_port=1, flags="R", seq=0, ack=0, rel_seq=0,
                rel_ack=0, window=0, length=0, options={},
                note=SegmentNote.RST_UNACCEPTABLE_ACK)  # fmt: skip
    in_syn_sent = SegmentEvent(**base, state_before="SYN_SENT", state_after="CLOSED")  # type: ignore[arg-type]
    assert segment_comment(in_syn_sent).endswith("(RST for an unacceptable ACK; RFC 9293 3.10.7.3)")


def test_the_daemon_sinks_pick_pcapng_by_name_and_settle_on_close(tmp_path: Path) -> None:
    path = tmp_path / "t.pcapng"
    assert format_for(path) == "pcapng"
    assert format_for(tmp_path / "t.pcap") == "pcap"
    sinks = TraceSinks([TraceSpec(path, "pcapng")])
    assert sinks.tap is not None and sinks.tracer is not None
    packet = bytes(IP(src="198.18.0.1", dst="198.18.0.2") / TCP(dport=9, flags="S"))
    sinks.tap("in", packet, 0.0)
    assert path.read_bytes() == pcapng_header()  # held for its reasons
    sinks.close()  # ... written at the end all the same
    assert tshark_rows(path, "tcp.dstport") == [["9"]]


def test_a_rotated_pcapng_starts_each_file_with_its_header(tmp_path: Path) -> None:
    path = tmp_path / "t.pcapng"
    sinks = TraceSinks([TraceSpec(path, "pcapng")], rotation=TraceRotation(4096, keep=1))
    assert sinks.tap is not None
    packet = bytes(IP(src="198.18.0.2", dst="198.18.0.1") / TCP(sport=80, flags="SA") / bytes(900))
    for _ in range(6):  # about 1 KiB a block: the file rotates after four
        sinks.tap("out", packet, 0.0)
    sinks.close()
    rotated = path.with_name("t.pcapng.1")
    assert path.read_bytes().startswith(pcapng_header())
    assert rotated.read_bytes().startswith(pcapng_header())
    frames = len(tshark_rows(rotated, "frame.number")) + len(tshark_rows(path, "frame.number"))
    assert frames == 6
