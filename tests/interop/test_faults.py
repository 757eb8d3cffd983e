"""Faults on demand against a real Linux client: each lost segment is
recovered the way TCP says, and the recovery is visible in the trace."""

from __future__ import annotations

from typing import Any

from ustack.linux.lab import STACK_ADDRESS
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon


def segments(daemon: UstackDaemon, port: int) -> list[dict[str, Any]]:
    return [
        e
        for e in daemon.trace_events()
        if e["type"] in ("segment", "fault") and e.get("local_port") == port
    ]


def test_lost_synack_is_retransmitted(ns: Netns, tmp_path) -> None:
    daemon = UstackDaemon.start(ns, tmp_path, "--fault", "drop:dir=out,flags=SYN+ACK,count=1")
    try:
        result = ns.run("curl", "-sS", "--max-time", "15", f"http://{STACK_ADDRESS}/")
        assert result.returncode == 0, result.stderr
        daemon.wait_until_no_connections()
        events = segments(daemon, 80)
    finally:
        daemon.stop()
    synacks = [e for e in events if e.get("flags") == "S." and e["type"] in ("segment", "fault")]
    assert [e["type"] for e in synacks][:3] == ["segment", "fault", "segment"]
    assert synacks[1]["action"] == "drop"
    assert synacks[2]["note"] == "retransmission" and synacks[2]["seq"] == synacks[0]["seq"]


def test_lost_fin_is_retransmitted_after_rto(ns: Netns, tmp_path) -> None:
    daemon = UstackDaemon.start(ns, tmp_path, "--fault", "drop:dir=out,flags=FIN,count=1")
    try:
        result = ns.run("nc", "-w", "10", STACK_ADDRESS, "13")  # daytime: we close first
        assert result.stdout.endswith(b"-UTC\r\n")
        daemon.wait_until_no_connections()
        events = segments(daemon, 13)
        timers = [e for e in daemon.trace_events() if e["type"] == "timer"]
    finally:
        daemon.stop()
    fins = [e for e in events if "F" in e.get("flags", "") and e.get("direction") == "out"]
    assert [e["type"] for e in fins[:3]] == ["segment", "fault", "segment"]
    first, _lost, again = fins[:3]
    assert again["note"] == "retransmission" and again["seq"] == first["seq"]
    assert again["time"] - first["time"] >= 0.19  # after the retransmission timeout
    assert any(t["timer"] == "retransmit" and t["action"] == "fired" for t in timers)


def test_lost_final_ack_makes_the_peer_resend_its_fin_into_time_wait(ns: Netns, tmp_path) -> None:
    daemon = UstackDaemon.start(
        ns, tmp_path, "--msl", "3", "--fault", "drop:dir=out,flags=ACK,only=1,port=13,count=1"
    )
    try:
        result = ns.run("nc", "-w", "10", STACK_ADDRESS, "13")
        assert result.stdout.endswith(b"-UTC\r\n")
        daemon.wait_until_no_connections(timeout=20)
        events = daemon.trace_events()
    finally:
        daemon.stop()
    peer_fins = [
        e for e in events if e["type"] == "segment" and e["direction"] == "in" and "F" in e["flags"]
    ]
    assert len(peer_fins) >= 2  # Linux resent its FIN: our ACK never reached it
    assert peer_fins[1]["state_before"] == "TIME_WAIT"
    assert any("FIN retransmitted in TIME_WAIT" in e.get("what", "") for e in events)
    dropped = [e for e in events if e["type"] == "fault"]
    assert dropped and dropped[0]["flags"] == "."


def test_fault_rules_at_run_time_and_bad_rules(ns: Netns, daemon: UstackDaemon) -> None:
    reply = daemon.request("fault", do="add", rule="drop:dir=in,flags=SYN,count=1")
    assert reply["ok"] and reply["rule"]["id"] == 1
    bad = daemon.request("fault", do="add", rule="explode:dir=sideways")
    assert not bad["ok"] and "unknown action" in bad["error"]
    # The first SYN is lost; curl's kernel resends it after 1 s and gets in.
    result = ns.run("curl", "-sS", "--max-time", "15", f"http://{STACK_ADDRESS}/")
    assert result.returncode == 0
    (rule,) = daemon.request("fault", do="list")["rules"]
    assert rule["applied"] == 1
    assert daemon.request("fault", do="clear")["removed"] == 1
    assert daemon.stats()["fault.drop"] == 1


def test_config_at_run_time(ns: Netns, daemon: UstackDaemon) -> None:
    reply = daemon.request("config", msl=0.1, time_wait_rst="close")
    assert reply["ok"] and reply["msl"] == 0.1 and reply["time_wait_rst"] == "close"
    assert not daemon.request("config", msl="soon")["ok"]
