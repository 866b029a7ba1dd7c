#!/usr/bin/env bash
# Durable accept rate of pluto2 against a Postfix reference, in one run.
#
# Both sides answer 250 only after the message is on disk (pluto2: SQLite
# WAL commit with synchronous=FULL; Postfix: cleanup fsyncs the queue file).
# Postfix then discards the message; pluto2 keeps it in its spool (no Tor
# proxy is reachable, and the first delivery attempt only happens after the
# run). Cells alternate between the two servers; each cell runs REPS times
# and the median is reported.
#
#   bash scripts/bench-accept.sh            # needs root for Postfix
#   REPS=5 bash scripts/bench-accept.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
PF_PORT=${PF_PORT:-2626}
PL_PORT=${PL_PORT:-2627}
work=$(mktemp -d /var/tmp/pluto2-bench.XXXXXX)
# Postfix daemons run as the postfix user and must reach their queue.
chmod 755 "$work"
SOURCE=/usr/sbin/smtp-source

cargo build --release --quiet
name=$(python3 - <<'PY'
import base64, hashlib
key = bytes(range(32))
check = hashlib.sha3_256(b".onion checksum" + key + b"\x03").digest()[:2]
print(base64.b32encode(key + check + b"\x03").decode().lower() + ".onion")
PY
)

cleanup() {
  [ -n "${pl_pid:-}" ] && kill "$pl_pid" 2>/dev/null || true
  bash scripts/postfix-reference.sh stop "$PF_PORT" "$work/postfix"
  rm -rf "$work"
}
trap cleanup EXIT

bash scripts/postfix-reference.sh start "$PF_PORT" "$work/postfix"
# Nothing listens on the SOCKS port, so queued mail just waits.
./target/release/pluto2 -name "$name" -addr "127.0.0.1:$PL_PORT" -data-dir "$work/pluto2" \
  -rate-limit 100000000 -max-connections 2000 -tor-socks 127.0.0.1:9 -retry-base 1h \
  2>"$work/pluto2.log" &
pl_pid=$!
for _ in $(seq 1 100); do grep -q "listening on" "$work/pluto2.log" && break; sleep 0.1; done

# rate PORT SESSIONS MESSAGES SIZE -> messages per second
rate() {
  local start end
  start=$(date +%s.%N)
  "$SOURCE" -c -s "$2" -m "$3" -l "$4" -f bench@example.org -t sink@example.net "127.0.0.1:$1" >/dev/null 2>"$work/source.err" \
    || { echo "smtp-source failed against port $1:" >&2; cat "$work/source.err" >&2; exit 1; }
  end=$(date +%s.%N)
  python3 -c "print(f'{$3 / ($end - $start):.1f}')"
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

sent=0
echo "| sessions | size | pluto2 msg/s | Postfix msg/s | ratio |"
echo "|---:|---:|---:|---:|---:|"
for size in 4096 65536; do
  for sessions in 1 20 100; do
    if [ "$size" -eq 4096 ]; then count=2000; else count=500; fi
    pl=(); pf=()
    for _ in $(seq 1 "$REPS"); do
      pl+=("$(rate "$PL_PORT" "$sessions" "$count" "$size")"); sent=$((sent + count))
      pf+=("$(rate "$PF_PORT" "$sessions" "$count" "$size")")
    done
    a=$(median "${pl[@]}"); b=$(median "${pf[@]}")
    echo "| $sessions | $((size / 1024)) KiB | $a | $b | $(python3 -c "print(f'{$a / $b:.2f}')")× |"
  done
done

stored=$(./target/release/pluto2 queue -data-dir "$work/pluto2" -json | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"])')
echo
echo "pluto2 stored $stored of $sent messages sent (must be equal: no replay refusals, no loss)"
[ "$stored" -eq "$sent" ]
