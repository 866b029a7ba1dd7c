#!/usr/bin/env bash
# Idle cost of a direct-mode daemon on its defaults (release build): CPU
# over 120 s and RSS at the end. Tor is a closed port on loopback, so cover
# fails and pauses, as it would on a node whose Tor is down; nothing leaves
# the machine. Bounded: one process, 125 s.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/release/pluto2 ] || cargo build --release
D=$(mktemp -d)
ONION=$(grep -o '"[a-z2-7]\{56\}\.onion"' README.md | head -1 | tr -d '"')
target/release/pluto2 -name "$ONION" -data-dir "$D/data" -addr 127.0.0.1:0 -tor-socks 127.0.0.1:9 -stats-interval 1h 2> "$D/log" &
PID=$!
sleep 5
read -r a b < <(awk '{print $14, $15}' /proc/$PID/stat)
sleep 120
read -r c d < <(awk '{print $14, $15}' /proc/$PID/stat)
RSS=$(grep VmRSS /proc/$PID/status | awk '{print $2}')
kill $PID; wait $PID || true
echo "direct mode, defaults (cover on, Tor unreachable), 120 s: CPU $(( (c+d-a-b) )) ticks = $(python3 -c "print(round(($c+$d-$a-$b)/100/120*100,3))") %, RSS $RSS KiB"
grep -c "cover" "$D/log" || true
rm -rf "$D"
