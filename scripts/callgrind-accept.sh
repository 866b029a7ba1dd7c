#!/usr/bin/env bash
# Instructions per accepted message, counted by valgrind's callgrind: a
# figure that does not move when other work shares the CPUs, unlike
# msg/s on this 2-core machine.
#
#   bash scripts/callgrind-accept.sh [BINARY] [OUTDIR]
#   SESSIONS=20 SIZE=4096 N_SMALL=500 N_LARGE=1500 bash scripts/callgrind-accept.sh
#
# Runs the daemon under callgrind twice with the accept benchmark's flags
# (scripts/bench-accept.sh: durable queue, delivery parked on a silent
# SOCKS port, no cover), sends N_SMALL and then N_LARGE messages with
# smtp-source (one message per connection, SESSIONS in parallel), stops it
# with SIGTERM and prints the user-space instructions per message as the
# difference of the two totals divided by N_LARGE - N_SMALL, so that start
# and shutdown cancel out. The callgrind.out files stay in OUTDIR
# (callgrind_annotate them). Kernel work (syscalls, fsync) is not counted:
# see `perf` in BENCHMARKS.md for that. Only 127.0.0.1 is used.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${1:-target/release/pluto2}
OUT=${2:-$(mktemp -d /var/tmp/pluto2-callgrind.XXXXXX)}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-4096}
N_SMALL=${N_SMALL:-500}
N_LARGE=${N_LARGE:-1500}
PORT=${PORT:-2637}
SOURCE=/usr/sbin/smtp-source
mkdir -p "$OUT"

# shellcheck source=scripts/accept-lib.sh
source "$(dirname "$0")/accept-lib.sh"
extra=()
if "$BIN" -h 2>&1 | grep -q -- '--cover-interval'; then extra+=(-cover-interval 0); fi

# A SOCKS "proxy" that accepts and never answers: delivery stays parked.
pl_pid=""
hole_pid=""
trap '[ -n "$pl_pid" ] && kill "$pl_pid" 2>/dev/null; [ -n "$hole_pid" ] && kill "$hole_pid" 2>/dev/null; rm -rf "$OUT"/data-*' EXIT
start_hole "$OUT/hole.port"

one() { # N -> total instructions of the daemon's run
  local n=$1 data=$OUT/data-$1 log=$OUT/pluto2-$1.log
  valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.$n" \
    "$BIN" -name "$name" -addr "127.0.0.1:$PORT" -data-dir "$data" \
    -rate-limit 1000000 -max-connections 2000 \
    -tor-socks "127.0.0.1:$hole_port" -delivery-timeout 1h -retry-base 1h "${extra[@]}" \
    2>"$log" &
  pl_pid=$!
  for _ in $(seq 1 600); do
    grep -q "listening on 127.0.0.1:$PORT" "$log" 2>/dev/null && break
    kill -0 "$pl_pid" 2>/dev/null || { echo "pluto2 did not start" >&2; tail -5 "$log" >&2; exit 1; }
    sleep 0.1
  done
  timeout 600 "$SOURCE" -s "$SESSIONS" -m "$n" -l "$SIZE" -f bench@sender.example -t "$TO" \
    "127.0.0.1:$PORT" >/dev/null
  kill -TERM "$pl_pid"
  wait "$pl_pid" || true
  pl_pid=""
  stored=$("$BIN" queue -data-dir "$data" -json 2>/dev/null || echo '{}')
  echo "$stored" | python3 -c 'import json,sys; q=json.load(sys.stdin); sys.exit(0 if q.get("messages")==int(sys.argv[1]) else 1)' "$n" ||
    { echo "the spool does not hold the $n messages sent: $stored" >&2; exit 1; }
  grep -m1 '^summary:' "$OUT/callgrind.out.$n" | awk '{print $2}'
}

small=$(one "$N_SMALL")
large=$(one "$N_LARGE")
echo "binary: $BIN ($SESSIONS sessions, $SIZE bytes, runs of $N_SMALL and $N_LARGE messages)"
echo "instructions: $small and $large; per message: $(( (large - small) / (N_LARGE - N_SMALL) ))"
echo "profiles: $OUT/callgrind.out.$N_SMALL $OUT/callgrind.out.$N_LARGE"
