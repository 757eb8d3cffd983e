#!/usr/bin/env bash
# The README's tour: ustack in a private network namespace, a real curl session
# traced four ways (text, JSON lines, pcap, pcapng with the reasons), its ladder
# diagram (ASCII, SVG, Mermaid), the plain-words explanation, tshark reading the
# pcap and the pcapng's comments, the qlog export, and ss/stats
# of the running daemon. Needs root; everything it makes goes away at the end.
#   usage: sudo tools/tour.sh [OUTDIR]      (default: ./tour)
set -euo pipefail
out=$(realpath -m "${1:-tour}")
mkdir -p "$out"
python=${PYTHON:-python3}

# `ustack lab` makes the namespace and runs the daemon (its log and control
# socket in $out); the session runs inside, and when it ends the daemon stops,
# so the traces are complete, and the namespace goes.
"$python" -m ustack lab --workdir "$out" --serve-arg=--msl=1 --serve-arg=--peer-states \
    --trace "$out/trace.txt" --trace "$out/trace.jsonl" --trace "$out/trace.pcap" \
    --trace "$out/trace.pcapng" -- \
    env PYTHON="$python" bash -euo pipefail -c '
echo "== curl http://198.18.0.2/"
curl -sS http://198.18.0.2/ | head -3
echo "== ustack ss (curl closed first: Linux holds TIME_WAIT, our table has only listeners)"
"$PYTHON" -m ustack ss
echo "== nc 198.18.0.2 13 (daytime: ustack closes first and holds TIME_WAIT)"
nc -w 2 198.18.0.2 13 </dev/null
"$PYTHON" -m ustack ss
echo "== ustack stats"
"$PYTHON" -m ustack stats
sleep 2.5   # TIME_WAIT (2 * MSL = 2 s) ends, the peers timewait sockets too
'

conn=$(grep -m1 '"type": "connection"' "$out/trace.jsonl" | sed 's/.*"conn": \([0-9]*\).*/\1/')
echo "== ustack ladder (connection $conn, the curl session)"
"$python" -m ustack ladder "$out/trace.jsonl" --conn "$conn" | tee "$out/ladder.txt"
"$python" -m ustack ladder "$out/trace.jsonl" --conn "$conn" -o "$out/ladder.svg"
"$python" -m ustack ladder "$out/trace.jsonl" --conn "$conn" -o "$out/ladder.mmd"
echo "== ustack explain"
"$python" -m ustack explain "$out/trace.jsonl" --conn "$conn"
echo "== tshark -r trace.pcap"
tshark -r "$out/trace.pcap" 2>/dev/null | head -20
echo "== tshark -r trace.pcapng: ustack's reasons beside the frames"
tshark -r "$out/trace.pcapng" -Y "tcp.port == 80" -T fields -e frame.number -e tcp.flags.str \
    -e frame.comment 2>/dev/null | head -4
"$python" -m ustack export "$out/trace.jsonl" --qlog -o "$out/trace.sqlog"
echo "== qlog (JSON-SEQ): $out/trace.sqlog, $(grep -c . "$out/trace.sqlog") records"
echo "== the text trace: $out/trace.txt; SVG: $out/ladder.svg; Mermaid: $out/ladder.mmd"
