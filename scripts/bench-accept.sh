#!/usr/bin/env bash
# Durable accept rate: pluto2 against a Postfix reference, in one run.
#
#   bash scripts/bench-accept.sh                 # as root; about 2-4 minutes
#   REPS=3 N4=1000 N64=300 bash scripts/bench-accept.sh
#   SOURCE_OPTS=-d bash scripts/bench-accept.sh  # all messages of a session on one connection
#   PF_HOLD=1 bash scripts/bench-accept.sh       # Postfix puts mail on hold: accept path only
#   PLUTO2=/path/to/pluto2 SESSIONS_LIST=20 SIZES=4096 bash scripts/bench-accept.sh
#                                                # another build (no cargo build), one cell
#
# Both servers answer 250 to DATA only once the message is on stable
# storage: pluto2 after its SQLite transaction (WAL, synchronous=FULL) is
# fsynced, Postfix after cleanup has fsynced the queue file. Postfix then
# discards the message (scripts/postfix-reference.sh); pluto2 keeps it, and
# its delivery workers are parked on a SOCKS port that accepts and never
# answers, so no delivery work runs during the measurement.
#
# With PF_HOLD=1, Postfix keeps every message in its hold queue instead of
# discarding it (emptied between cells), so neither side does any work after
# the 250.
#
# Load: Postfix's smtp-source, one message per connection (its default),
# one recipient, SESSIONS connections in parallel. For every cell
# (sessions x size) a fresh pluto2 data directory is used; runs alternate
# pluto2 / Postfix, REPS times each, after one untimed warm-up run each. The
# median messages/second is reported. The script fails if smtp-source saw
# any unexpected reply, if pluto2 did not store exactly what was sent, or if
# Postfix did not discard exactly what was sent.
#
# Only 127.0.0.1 is used. Every load step is bounded in messages, each
# smtp-source run by a timeout, and the whole run by a deadline.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-5}
N4=${N4:-3000}          # messages per timed run at 4 KiB
N64=${N64:-1000}        # messages per timed run at 64 KiB
SESSIONS_LIST=${SESSIONS_LIST:-"1 20 100"}
PF_PORT=${PF_PORT:-2626}
PL_PORT=${PL_PORT:-2627}
DEADLINE=${DEADLINE:-840} # seconds for the whole run (< 15 minutes)
RUN_TIMEOUT=180           # seconds for one smtp-source run
PF_HOLD=${PF_HOLD:-0}
read -r -a SOURCE_OPTS <<<"${SOURCE_OPTS:-}" # extra smtp-source options, e.g. -d
SOURCE=/usr/sbin/smtp-source
FROM=bench@sender.example

[ "$(id -u)" -eq 0 ] || { echo "run as root: the Postfix reference needs it" >&2; exit 1; }
for p in "$PF_PORT" "$PL_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "127.0.0.1:$p is already in use; set PF_PORT/PL_PORT" >&2; exit 1
  fi
done

if [ -n "${PLUTO2:-}" ]; then
  PLUTO2=$(realpath "$PLUTO2") # a given binary, e.g. an older commit's build
elif ! cargo build --release --quiet; then
  echo "cargo build --release failed (source mid-edit?); try again later" >&2
  exit 1
else
  PLUTO2=$PWD/target/release/pluto2
fi

t0=$(date +%s)
work=$(mktemp -d /var/tmp/pluto2-bench.XXXXXX)
chmod 755 "$work" # Postfix's daemons (user postfix) must reach their queue
pl_pid=""; hole_pid=""
stop_pluto2() {
  [ -n "$pl_pid" ] || return 0
  kill "$pl_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pl_pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pl_pid" 2>/dev/null || true
  wait "$pl_pid" 2>/dev/null || true
  pl_pid=""
}
cleanup() {
  stop_pluto2
  [ -n "$hole_pid" ] && kill "$hole_pid" 2>/dev/null || true
  bash scripts/postfix-reference.sh stop "$PF_PORT" "$work/postfix" || true
  rm -rf "$work"
}
trap cleanup EXIT

# v3 onion names with real ed25519 keys (pluto2 refuses keys Tor would
# refuse; these are OnionName::from_seed(1) and (2) in the Rust code): one for
# pluto2 itself, one for the recipient. The recipient is an onion address,
# pluto2's main case: a clearnet domain would add an MX lookup through Tor
# at RCPT time, which this benchmark does not model.
# shellcheck source=scripts/accept-lib.sh
source "$(dirname "$0")/accept-lib.sh"
# No cover traffic: it would add messages to the spool that were not sent.
extra=()
if "$PLUTO2" -h 2>&1 | grep -q -- '--cover-interval'; then extra+=(-cover-interval 0); fi

# The "SOCKS proxy" for pluto2: accepts TCP connections into its backlog and
# never says a word, so a delivery attempt waits for -delivery-timeout (1h).
start_hole "$work/hole.port"

REFERENCE_HOLD=$PF_HOLD bash scripts/postfix-reference.sh start "$PF_PORT" "$work/postfix"
pf_log=$work/postfix/maillog

start_pluto2() { # DATA_DIR; logs to DATA_DIR.log
  pl_log=$1.log
  "$PLUTO2" -name "$name" -addr "127.0.0.1:$PL_PORT" -data-dir "$1" \
    -rate-limit 1000000 -max-connections 2000 \
    -tor-socks "127.0.0.1:$hole_port" -delivery-timeout 1h -retry-base 1h "${extra[@]}" \
    2>"$pl_log" &
  pl_pid=$!
  for _ in $(seq 1 100); do
    grep -q "listening on 127.0.0.1:$PL_PORT" "$pl_log" 2>/dev/null && return 0
    kill -0 "$pl_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "pluto2 did not start:" >&2; tail -5 "$pl_log" >&2; exit 1
}

check_deadline() {
  if [ $(( $(date +%s) - t0 )) -gt "$DEADLINE" ]; then
    echo "deadline of ${DEADLINE}s exceeded; lower REPS, N4 or N64" >&2; exit 1
  fi
}

# Machine counters: CPU ticks busy, CPU ticks total, flushes and sectors
# written by the block device holding the data.
counters() {
  local dev
  dev=$(basename "$(df --output=source "$work" | tail -1)")
  awk 'NR==1 {busy=$2+$3+$4+$7+$8+$9; total=busy+$5+$6} END {printf "%d %d ", busy, total}' /proc/stat
  awk -v d="$dev" '$3==d {f=$19; w=$10} END {print (f=="" ? "0 0" : f " " w)}' /proc/diskstats
}

# Messages in the Postfix reference's queue that still wait for processing
# (not yet discarded, or not yet on hold).
postfix_queued() {
  local dirs=(incoming active deferred)
  [ "$PF_HOLD" = 1 ] || dirs+=(hold)
  (cd "$work/postfix/queue" && find "${dirs[@]}" -type f 2>/dev/null | wc -l)
}
postfix_held() { find "$work/postfix/queue/hold" -type f 2>/dev/null | wc -l; }

# run PORT SESSIONS COUNT SIZE -> one line of numbers:
#   accept msg/s, CPU busy %, flushes/msg, server CPU µs/msg,
#   smtp-source CPU µs/msg, msg/s including Postfix's queue drain,
#   KiB written to the device per message
# The accept rate is COUNT over the wall time of smtp-source. For Postfix the
# run then waits until qmgr and discard have emptied the queue, so that no
# leftover work runs into the next measurement; the machine counters (CPU,
# flushes) cover that drain too, i.e. Postfix's whole cost per message.
run() {
  local port=$1 sessions=$2 count=$3 size=$4 a b start end drained cpu rc i
  check_deadline
  a=$(counters)
  start=$(date +%s.%N)
  rc=0
  { TIMEFORMAT='%U %S'; time timeout "$RUN_TIMEOUT" "$SOURCE" "${SOURCE_OPTS[@]}" \
      -s "$sessions" -m "$count" -l "$size" -f "$FROM" -t "$TO" "127.0.0.1:$port" \
      >/dev/null 2>"$work/source.err"; } 2>"$work/source.time" || rc=$?
  end=$(date +%s.%N)
  if [ "$rc" -ne 0 ]; then
    echo "smtp-source exited with status $rc against 127.0.0.1:$port (sessions $sessions, size $size):" >&2
    cat "$work/source.err" >&2; exit 1
  fi
  if [ -s "$work/source.err" ]; then
    echo "smtp-source printed errors against 127.0.0.1:$port:" >&2; cat "$work/source.err" >&2; exit 1
  fi
  drained=$end
  if [ "$port" = "$PF_PORT" ]; then
    for i in $(seq 1 1200); do
      [ "$(postfix_queued)" -eq 0 ] && break
      [ "$i" -eq 1200 ] && { echo "Postfix did not drain its queue within 60s" >&2; exit 1; }
      sleep 0.05
    done
    drained=$(date +%s.%N)
  fi
  b=$(counters)
  cpu=$(cat "$work/source.time")
  awk -v s="$start" -v e="$end" -v d="$drained" -v n="$count" -v a="$a" -v b="$b" -v c="$cpu" \
      -v hz="$(getconf CLK_TCK)" 'BEGIN {
    split(a, x, " "); split(b, y, " "); split(c, t, " ")
    busy = (y[1] - x[1]) / hz; total = (y[2] - x[2]) / hz; src = t[1] + t[2]
    printf "%.1f %.0f %.2f %.0f %.0f %.1f %.0f\n", n / (e - s), 100 * busy / total, (y[3] - x[3]) / n,
      1e6 * (busy - src) / n, 1e6 * src / n, n / (d - s), (y[4] - x[4]) / 2 / n
  }'
}

# Other work on the machine (builds, tests) distorts a 2-CPU box badly: before
# each cell, wait (at most QUIET_WAIT seconds) for a second in which the CPUs
# are less than 25% busy.
QUIET_WAIT=${QUIET_WAIT:-60}
wait_quiet() {
  local i a b
  for i in $(seq 1 "$QUIET_WAIT"); do
    a=$(counters); sleep 1; b=$(counters)
    if awk -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " ");
        exit !((y[1] - x[1]) < 0.25 * (y[2] - x[2]))}'; then
      [ "$i" -gt 1 ] && echo "(waited ${i}s for other work on the machine to finish)" >&2
      return 0
    fi
  done
  echo "warning: the machine stayed busy for ${QUIET_WAIT}s; this cell is measured anyway" >&2
  noisy=$(( noisy + 1 ))
}
noisy=0

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
col() { local i=$1; shift; for r in "$@"; do echo "$r" | awk -v i="$i" '{print $i}'; done; }

postfix_discarded() { grep -c 'status=sent (reference)' "$pf_log" 2>/dev/null || true; }
pf_held=0

if [ "$PLUTO2" = "$PWD/target/release/pluto2" ]; then
  built="$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' (uncommitted changes in src)')"
else
  built=$PLUTO2
fi
echo "pluto2 $built; $(/usr/sbin/postconf -d mail_version 2>/dev/null | sed 's/ = / /;s/mail_version/Postfix/')"
echo "$(nproc) CPUs, kernel $(uname -r), data on $(df --output=fstype "$work" | tail -1) ($(df --output=source "$work" | tail -1)); REPS=$REPS N4=$N4 N64=$N64"
echo

rows=(); details=(); pf_sent=0; total_pl=0
for size in ${SIZES:-4096 65536}; do
  if [ "$size" -eq 4096 ]; then count=$N4; else count=$N64; fi
  for sessions in $SESSIONS_LIST; do
    data=$work/pluto2-$sessions-$size
    wait_quiet
    start_pluto2 "$data"
    warm=$(( sessions * 2 ))
    run "$PL_PORT" "$sessions" "$warm" "$size" >/dev/null
    run "$PF_PORT" "$sessions" "$warm" "$size" >/dev/null
    pl_sent=$warm; pf_sent=$(( pf_sent + warm ))
    pl=(); pf=()
    for _ in $(seq 1 "$REPS"); do
      r=$(run "$PL_PORT" "$sessions" "$count" "$size"); pl+=("$r"); pl_sent=$(( pl_sent + count ))
      r=$(run "$PF_PORT" "$sessions" "$count" "$size"); pf+=("$r"); pf_sent=$(( pf_sent + count ))
    done
    stored=$("$PLUTO2" queue -data-dir "$data" -json)
    stop_pluto2
    rm -rf "$data"
    if ! echo "$stored" | python3 -c 'import json,sys; q=json.load(sys.stdin); n=int(sys.argv[1]); sys.exit(0 if q["messages"]==n and q["recipients"]==n else 1)' "$pl_sent"; then
      echo "pluto2 sent $pl_sent messages but its spool says: $stored" >&2; exit 1
    fi
    total_pl=$(( total_pl + pl_sent ))
    if [ "$PF_HOLD" = 1 ]; then
      held=$(postfix_held)
      if [ "$held" -ne "$(( pf_sent - pf_held ))" ]; then
        echo "Postfix: sent $(( pf_sent - pf_held )) in this cell, $held on hold" >&2; exit 1
      fi
      postsuper -c "$work/postfix/etc" -d ALL hold 2>/dev/null
      pf_held=$pf_sent
    else
      sleep 0.5 # postlogd writes the log asynchronously
      if [ "$(postfix_discarded)" -ne "$pf_sent" ]; then
        echo "Postfix: sent $pf_sent, its log shows $(postfix_discarded) discarded" >&2; exit 1
      fi
    fi
    a=$(median $(col 1 "${pl[@]}")); b=$(median $(col 1 "${pf[@]}"))
    label="| $sessions | $(( size / 1024 )) KiB"
    rows+=("$label | $a | $b | $(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", a / b}')× |")
    both() { echo "$(median $(col "$1" "${pl[@]}")) / $(median $(col "$1" "${pf[@]}"))"; }
    details+=("$label | $(both 2) | $(both 3) | $(both 7) | $(both 4) | $(both 5) | $(median $(col 6 "${pf[@]}")) |")
    printf 'done: %s sessions, %s bytes: pluto2 %s, Postfix %s (each run, msg/s)\n' "$sessions" "$size" \
      "$(col 1 "${pl[@]}" | tr '\n' ' ')" "$(col 1 "${pf[@]}" | tr '\n' ' ')" >&2
  done
done

if [ ${#SOURCE_OPTS[@]} -eq 0 ]; then how="one message per connection"; else how="smtp-source ${SOURCE_OPTS[*]}"; fi
[ "$PF_HOLD" = 1 ] && how="$how; Postfix puts mail on hold"
echo "Median of $REPS runs, messages per second ($how):"
echo
echo "| sessions | size | pluto2 msg/s | Postfix msg/s | pluto2 / Postfix |"
echo "|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
echo
echo "Medians, pluto2 / Postfix (Postfix figures include draining its queue): CPU"
echo "busy (both CPUs); block-device flushes and KiB written per message; CPU per"
echo "message outside smtp-source (servers, kernel, other work; µs); smtp-source's own"
echo "CPU per message (µs); Postfix's rate counted until its queue was empty again:"
echo
echo "| sessions | size | CPU busy % | flushes/msg | KiB written/msg | server CPU µs/msg | smtp-source CPU µs/msg | Postfix msg/s to empty queue |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${details[@]}"
echo
if cat "$work"/pluto2-*.log | grep -Eiq 'panick|\bERROR\b|\bWARN\b'; then
  echo "pluto2 logged warnings or errors:"
  cat "$work"/pluto2-*.log | grep -Ei 'panick|\bERROR\b|\bWARN\b' | cut -c29- | sort | uniq -c | head -20
else
  echo "pluto2 logged no warnings or errors."
fi
[ "$noisy" -eq 0 ] || echo "Warning: $noisy cell(s) started while other work kept the CPUs busy."
echo "Checks passed: pluto2 stored all $total_pl messages sent to it (no 554 replay refusals,"
if [ "$PF_HOLD" = 1 ]; then pf_did="put on hold"; else pf_did="discarded"; fi
echo "no loss); Postfix $pf_did all $pf_sent; smtp-source saw no unexpected reply. ($(( $(date +%s) - t0 ))s)"
