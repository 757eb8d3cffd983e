"""D-SACKs (RFC 2883) and the undo they allow: a duplicate reported for
bytes we sent again shows the retransmission was needless (RFC 3708
detection), and once every byte resent in a loss episode has come back
duplicated, the episode's window cut is undone (RFC 4015 response; Linux's
DSACK undo). RACK widens its reordering window on each (RFC 8985 6.2).

`DsackUndo` is Recovery's base: these are Recovery's own methods, kept here
apart from loss detection and retransmission (recovery.py); the state they
use (undo_cc, undo_marker, undo_bytes, resent) is Recovery's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ustack.tcp import seq
from ustack.trace.vocabulary import Note

if TYPE_CHECKING:
    from ustack.tcp import congestion
    from ustack.tcp.connection import TcpConnection
    from ustack.tcp.rack import Rack
    from ustack.tcp.rtt import RttEstimator
    from ustack.tcp.sender import Sender

_RESENT_KEPT = 16  # retransmitted stretches remembered for D-SACK detection


class DsackUndo:
    """Recovery's D-SACK handling and undo."""

    # The state these methods use is kept here (Recovery's __slots__ add
    # the rest): one class body that mypy checks and mypyc compiles.
    __slots__ = (
        "_conn",
        "_snd",
        "cc",
        "peer_delays_acks",
        "probe_range",
        "rack",
        "recover",
        "resent",
        "rtt",
        "undo_bytes",
        "undo_cc",
        "undo_marker",
    )
    # What Recovery's release() drops (TcpConnection.release; mypyc's list
    # of the attributes that may be deleted).
    __deletable__ = ("_conn", "_snd")

    _conn: TcpConnection
    _snd: Sender
    cc: congestion.CongestionControl
    rack: Rack
    rtt: RttEstimator
    recover: int | None
    probe_range: tuple[int, int] | None
    peer_delays_acks: bool
    undo_cc: congestion.CongestionControl | None
    undo_marker: int
    undo_bytes: int
    resent: list[tuple[int, int]]

    def _begin_undo(self) -> None:
        """A loss episode begins: keep the congestion state before its cut."""
        self.undo_cc = self.cc.copy()
        self.undo_marker = self._snd.snd_una
        self.undo_bytes = 0

    def duplicate_reported(self, block: tuple[int, int]) -> None:
        """A D-SACK (RFC 2883): the peer got these bytes twice. Reordering,
        not loss, if they were resent: RACK widens its window (RFC 8985 6.2
        step 4), and once every byte resent in the episode has come back
        duplicated, no loss happened: the window cut is undone (RFC 3708
        detection, RFC 4015 response; Linux's DSACK undo)."""
        conn = self._conn
        left, right = block
        self.rack.on_dsack(conn.now, self.rtt.srtt or 0.0)
        spurious = self._was_resent(left, right)
        probe = self.probe_range
        if probe is not None and seq.lt(left, probe[1]) and seq.lt(probe[0], right):
            # The probe was needless: the peer's ACK was only late. From now
            # on every PTO allows for its delayed ACK (arm_probe).
            self.probe_range = None
            self.peer_delays_acks = True
            if conn.counters is not None:
                conn.counters["tcp.loss-probes.spurious"] += 1
        counters = conn.counters
        if counters is not None:
            counters["tcp.in.dsack"] += 1  # Linux's TCPDSACKRecv
            if spurious:
                counters["tcp.spurious-retransmits"] += 1
        conn.decide(
            Note.DSACK_RECEIVED,
            left=left,
            right=right,
            what="a retransmission was needless" if spurious else "not one we resent lately",
        )
        if self.undo_cc is None or self.undo_bytes <= 0 or seq.lt(left, self.undo_marker):
            return  # no episode, nothing resent in it, or a duplicate from before it
        self.undo_bytes -= seq.diff(right, left)
        if self.undo_bytes > 0 or self.rack.lost_out:
            return
        prior, cwnd = self.undo_cc, self.cc.cwnd
        self.undo_cc = None
        prior.cwnd = max(prior.cwnd, cwnd)
        self.cc = prior
        self.recover = None
        if counters is not None:
            counters["tcp.undo"] += 1  # Linux's TCPDSACKUndo
        conn.decide(
            Note.SPURIOUS_RETRANSMISSION,
            marker=self.undo_marker,
            cc=prior.name,
            cwnd=prior.cwnd,
            ssthresh=prior.ssthresh,
        )

    def note_resent(self, start: int, end: int) -> None:
        """start..end went out again: remember it for the D-SACKs to come."""
        resent = self.resent
        resent.append((start, end))
        if len(resent) > _RESENT_KEPT:
            del resent[0]

    def _was_resent(self, left: int, right: int) -> bool:
        """Whether a D-SACKed left..right overlaps a stretch sent again lately
        (then that retransmission counts once as spurious, RFC 3708 2)."""
        for index, (start, end) in enumerate(self.resent):
            if seq.lt(left, end) and seq.lt(start, right):
                del self.resent[index]
                return True
        return False


def dsack_block(blocks: tuple[tuple[int, int], ...], ack: int) -> tuple[int, int] | None:
    """The first block, if it reports a duplicate (RFC 2883 4): below the
    cumulative ACK, or inside the second block."""
    left, right = blocks[0]
    if seq.le(right, ack):
        return blocks[0]
    if len(blocks) > 1:
        outer_left, outer_right = blocks[1]
        if seq.ge(left, outer_left) and seq.le(right, outer_right):
            return blocks[0]
    return None
