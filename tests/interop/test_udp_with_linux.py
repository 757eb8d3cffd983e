"""UDP (RFC 768) between the daemon on a real TUN and Linux, both families:
nc -u and Python sockets against ustack's UDP echo and daytime, a datagram
larger than the MTU both ways, and an application's datagram endpoint on
ustack (tests/udp_app.py) exchanging with a Linux socket and hearing
Linux's port unreachable."""

from __future__ import annotations

import json
from pathlib import Path

from ustack.linux.lab import Family
from ustack.linux.lab import Netns
from ustack.linux.lab import UstackDaemon

UDP_APP = Path(__file__).resolve().parents[1] / "udp_app.py"


def test_nc_u_gets_its_line_back_from_udp_echo(
    ns: Netns, daemon: UstackDaemon, family: Family
) -> None:
    # -w 2: nc ends 2 s after stdin's end and the last datagram in.
    result = ns.run("nc", "-u", "-w", "2", family.stack, "7", input=b"hello over udp\n")
    assert result.stdout == b"hello over udp\n", result.stderr.decode()
    stats = daemon.stats()
    assert stats[f"{family.udp}.in"] == 1 and stats[f"{family.udp}.out"] == 1
    datagrams = [e for e in daemon.trace_events() if e["type"] == "datagram"]
    assert [(e["direction"], e["local_port"], e["length"]) for e in datagrams] == [
        ("in", 7, 15),
        ("out", 7, 15),
    ]


def test_a_4000_byte_datagram_comes_back_whole_in_fragments_both_ways(
    ns: Netns, daemon: UstackDaemon, family: Family
) -> None:
    code = family.udp_client(
        "data = bytes(range(256)) * 15 + b'x' * 160",
        f"s.sendto(data, ('{family.stack}', 7))",
        "back, addr = s.recvfrom(65536)",
        "print(len(back), back == data, addr[0], addr[1])",
    )
    assert ns.python(code).stdout.split() == [b"4000", b"True", family.stack.encode(), b"7"]
    stats = daemon.stats()
    assert stats[f"{family.ip}.reasm.oks"] == 1  # Linux fragmented it, we reassembled
    assert stats[f"{family.ip}.frag.oks"] == 1  # we fragmented the echo, Linux reassembled
    assert stats[f"{family.ip}.frag.creates"] == 3


def test_daytime_and_discard(ns: Netns, daemon: UstackDaemon, family: Family) -> None:
    code = family.udp_client(
        f"s.sendto(b'dropped', ('{family.stack}', 9))",
        f"s.sendto(b'', ('{family.stack}', 13))",
        "print(s.recv(100).decode(), end='')",
    )
    line = ns.python(code).stdout
    assert line.endswith(b"-UTC\r\n") and b"," in line, line
    stats = daemon.stats()
    assert stats[f"{family.udp}.in"] == 2 and stats[f"{family.udp}.out"] == 1
    assert f"{family.udp}.out.port-unreachable" not in stats


# A Linux socket listens on `listen_port`; another asks the ustack app to
# probe it, then a closed port; what each probe heard is printed as JSON.
PROBE = r"""
import json, socket, sys
family, stack, linux, listen_port, closed_port = sys.argv[1:6]
af = getattr(socket, family)
listener = socket.socket(af, socket.SOCK_DGRAM)
listener.bind((linux, int(listen_port)))
listener.settimeout(10)
asker = socket.socket(af, socket.SOCK_DGRAM)
asker.settimeout(15)
asker.sendto(listen_port.encode(), (stack, 5555))
data, addr = listener.recvfrom(100)
listener.sendto(b"from linux", addr)
answer = asker.recv(100).decode()
asker.sendto(closed_port.encode(), (stack, 5555))
refused = asker.recv(100).decode()
print(json.dumps({"heard": data.decode(), "from": addr[0], "answer": answer, "refused": refused}))
"""


def test_a_ustack_endpoint_exchanges_with_linux_and_hears_its_port_unreachable(
    ns: Netns, tmp_path: Path, family: Family
) -> None:
    with UstackDaemon.start(ns, tmp_path, program=(str(UDP_APP),)) as daemon:
        result = ns.python(
            PROBE, family.socket_family, family.stack, family.linux, "6000", "6001", timeout=60
        )
        stats = daemon.stats()
    heard = json.loads(result.stdout)
    assert heard == {
        "heard": "from ustack",
        "from": family.stack,
        "answer": "reply from linux",
        "refused": "error ConnectionRefusedError ECONNREFUSED",
    }
    assert stats[f"{family.udp}.in.icmp-errors"] == 1


def test_a_connected_linux_socket_gets_econnrefused_where_no_udp_service_is(
    ns: Netns, daemon: UstackDaemon, family: Family
) -> None:
    # chargen (19) and http (80) are TCP only: their UDP ports are closed.
    code = family.udp_client(
        f"s.connect(('{family.stack}', 19))",
        "s.send(b'x')",
        "try:",
        "    s.recv(10)",
        "except ConnectionRefusedError as exc:",
        "    print(exc.errno)",
    )
    assert ns.python(code).stdout.strip() == b"111"  # ECONNREFUSED
    stats = daemon.stats()
    assert stats[f"{family.udp}.out.port-unreachable"] == 1
    assert f"{family.udp}.in" not in stats


def test_the_udp_services_follow_the_tcp_services_switch(ns: Netns, tmp_path: Path) -> None:
    """--services echo:7007 runs echo alone, on TCP and UDP 7007: UDP 7 and
    13 are closed."""
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.settimeout(5)\n"
        "s.sendto(b'ping', ('198.18.0.2', 7007))\n"
        "print(s.recv(10).decode())\n"
        "for port in (7, 13):\n"
        "    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "    c.settimeout(5)\n"
        "    c.connect(('198.18.0.2', port))\n"
        "    c.send(b'x')\n"
        "    try:\n"
        "        c.recv(10)\n"
        "    except ConnectionRefusedError:\n"
        "        print('refused', port)\n"
    )
    with UstackDaemon.start(ns, tmp_path, "--services", "echo:7007", trace=False) as daemon:
        out = ns.python(code).stdout.decode().splitlines()
        stats = daemon.stats()
    assert out == ["ping", "refused 7", "refused 13"]
    assert stats["udp.in"] == 1 and stats["udp.out.port-unreachable"] == 2


# Linux as a router with no route beyond the link: ustack's datagram to a
# host past it gets ICMP net unreachable (ICMPv6 no route) back.
BEYOND = {"ipv4": "198.18.5.5", "ipv6": "2001:2:0:5::5"}


def test_a_ustack_endpoint_hears_net_unreachable_from_a_linux_router(
    ns: Netns, tmp_path: Path, family: Family
) -> None:
    ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", check=True)
    code = family.udp_client(
        f"s.sendto(b'{BEYOND[family.name]} 9', ('{family.stack}', 5555))",
        "print(s.recv(100).decode())",
        timeout=15,
    )
    with UstackDaemon.start(ns, tmp_path, program=(str(UDP_APP),)) as daemon:
        answer = ns.python(code, timeout=60).stdout.decode().strip()
        stats = daemon.stats()
    # Linux's icmp_err_convert: net unreachable is ENETUNREACH, an OSError
    # of no subclass of its own.
    assert answer == "error OSError ENETUNREACH", answer
    assert stats[f"{family.udp}.in.icmp-errors"] == 1
    errors = [e for e in json_lines(tmp_path / "trace.jsonl") if e["type"] == "datagram"]
    assert any(e["remote"] == BEYOND[family.name] for e in errors)


def json_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
