#!/usr/bin/env bash
# What a newcomer waits for with `pluto2 testnet` (README "Try the mixnet"):
# seconds from the command to its `ready;` line, for the printed swaks line
# to get its 250, and from that 250 to the testnet's `delivered:` line (the
# message in DIR/sink/), then Ctrl-C and the seconds until no process of
# the testnet is left. Release binary; each run a fresh directory.
#
#   bash scripts/bench-testnet.sh              # 3 runs, own SOCKS5 server
#   TOR=1 REPS=2 bash scripts/bench-testnet.sh # links over a private Tor network
#
# Every wait is bounded (300 s); a run that passes a bound fails the script.
# Needs swaks (and tor with TOR=1); scripts/test.sh installs both.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
EXTRA=()
[ "${TOR:-0}" = 1 ] && EXTRA=(-tor)

cargo build --release --quiet
bin=$PWD/target/release/pluto2
work=$(mktemp -d)
trap 'pkill -INT -f "$work/net" 2>/dev/null || true; rm -rf "$work"' EXIT
now() { date +%s.%N; }
# until FILE PATTERN: bounded wait for a line in FILE.
until_line() {
  for _ in $(seq 3000); do grep -q "$2" "$1" && return 0; sleep 0.1; done
  echo "no '$2' in $1 within 300 s" >&2; cat "$1" >&2; return 1
}
rows=$work/rows
for i in $(seq "$REPS"); do
  dir=$work/net$i
  out=$work/out$i
  t0=$(now)
  "$bin" testnet -dir "$dir" "${EXTRA[@]}" >"$out" 2>&1 &
  pid=$!
  until_line "$out" 'ready;'
  t1=$(now)
  read -r -a swaks < <(grep -o 'swaks --server.*' "$out")
  "${swaks[@]}" --silent 2
  t2=$(now)
  until_line "$out" 'delivered:'
  t3=$(now)
  kill -INT "$pid"
  wait "$pid"
  for _ in $(seq 3000); do pgrep -f "$dir" >/dev/null || break; sleep 0.1; done
  pgrep -f "$dir" >/dev/null && { echo "processes left in $dir" >&2; exit 1; }
  t4=$(now)
  echo "$i ready_s=$(python3 -c "print(f'{$t1-$t0:.1f}')") swaks_s=$(python3 -c "print(f'{$t2-$t1:.2f}')") delivered_s=$(python3 -c "print(f'{$t3-$t2:.1f}')") stopped_s=$(python3 -c "print(f'{$t4-$t3:.1f}')")" | tee -a "$rows"
done
python3 - "$rows" <<'PY'
import statistics, sys
rows = [dict(w.split("=") for w in l.split() if "=" in w) for l in open(sys.argv[1])]
for key in ("ready_s", "swaks_s", "delivered_s", "stopped_s"):
    vals = [float(r[key]) for r in rows]
    print(f"median {key} = {statistics.median(vals):.2f}  (min {min(vals):.2f}, max {max(vals):.2f}, n={len(vals)})")
PY
