#!/usr/bin/env bash
# The README's tour: ustack in a private network namespace, a real curl session
# traced three ways (text, JSON lines, pcap), its ladder diagram (ASCII, SVG,
# Mermaid), the plain-words explanation, tshark reading the pcap, and ss/stats
# of the running daemon. Needs root; everything it makes goes away at the end.
#   usage: sudo tools/tour.sh [OUTDIR]      (default: ./tour)
set -euo pipefail
out=$(realpath -m "${1:-tour}")
mkdir -p "$out"
ns="ustack-tour-$$"
python=${PYTHON:-python3}
daemon_pid=""

cleanup() {
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true
    fi
    ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT

ip netns add "$ns"
ip -n "$ns" link set lo up
exec {ready}<> <(:)
ip netns exec "$ns" "$python" -m ustack serve --control "$out/control.sock" --msl 1 \
    --trace "$out/trace.txt" --trace "$out/trace.jsonl" --trace "$out/trace.pcap" \
    --peer-states --ready-fd "$ready" 2>"$out/daemon.log" &
daemon_pid=$!
read -r -t 20 -u "$ready" line || { cat "$out/daemon.log"; exit 1; }

echo "== curl http://198.18.0.2/"
ip netns exec "$ns" curl -sS http://198.18.0.2/ | head -3
echo "== ustack ss (curl closed first: Linux holds TIME_WAIT, our table has only listeners)"
"$python" -m ustack ss --control "$out/control.sock"
echo "== nc 198.18.0.2 13 (daytime: ustack closes first and holds TIME_WAIT)"
ip netns exec "$ns" nc -w 2 198.18.0.2 13
"$python" -m ustack ss --control "$out/control.sock"
echo "== ustack stats"
"$python" -m ustack stats --control "$out/control.sock"
sleep 2.5   # TIME_WAIT (2 * MSL = 2 s) ends, the peers' timewait sockets too
kill -TERM "$daemon_pid"; wait "$daemon_pid" || true; daemon_pid=""

conn=$(grep -m1 '"type": "connection"' "$out/trace.jsonl" | sed 's/.*"conn": \([0-9]*\).*/\1/')
echo "== ustack ladder (connection $conn, the curl session)"
"$python" -m ustack ladder "$out/trace.jsonl" --conn "$conn" | tee "$out/ladder.txt"
"$python" -m ustack ladder "$out/trace.jsonl" --conn "$conn" -o "$out/ladder.svg"
"$python" -m ustack ladder "$out/trace.jsonl" --conn "$conn" -o "$out/ladder.mmd"
echo "== ustack explain"
"$python" -m ustack explain "$out/trace.jsonl" --conn "$conn"
echo "== tshark -r trace.pcap"
tshark -r "$out/trace.pcap" 2>/dev/null | head -20
echo "== the text trace: $out/trace.txt; SVG: $out/ladder.svg; Mermaid: $out/ladder.mmd"
