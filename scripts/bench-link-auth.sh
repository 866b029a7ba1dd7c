#!/usr/bin/env bash
# Authenticated links (issue 18) against the release before them (9e2de62,
# link protocol 2), side by side on the same machine.
#
#   bash scripts/bench-link-auth.sh            # node, flood and hello
#   bash scripts/bench-link-auth.sh node       # packets/s, old and new interleaved
#   bash scripts/bench-link-auth.sh flood      # one flooding peer, old and new
#   bash scripts/bench-link-auth.sh hello      # cost of a hello, handshakes/s
#   REPS=3 SECS=10 OLD_TREE=/tmp/old bash scripts/bench-link-auth.sh
#
# The old release is built in a git worktree of its own (OLD_TREE, default
# ../pluto2-9e2de62 beside this tree; created detached at OLD_REV if
# missing) with its own target directory: `cargo bench --no-run` there
# builds its mixnet_node bench and its release binary. Nothing is copied
# between the trees. Both builds use CARGO_INCREMENTAL=0 (smaller target
# directories); a release target directory is 2-4 GB, so the script
# refuses to build with less than 10 GB free.
#
# node:  REPS (default 3) runs of each tree's `cargo bench --bench
#        mixnet_node` with RUNS=1, alternating old and new so both see the
#        same machine; prints each run, the medians and new ÷ old.
# flood: this tree's benches/link_flood.rs with OLD_BIN set to the old
#        binary (RUNS=REPS, SECS per flood phase; it alternates itself).
# hello: this tree's benches/link_hello.rs (criterion, then handshakes
#        against a node); prints criterion's medians and each side's cost
#        as a multiple of one sign plus one strict verify.
# Each step is bounded: a fixed count of runs, each with its deadlines.
set -euo pipefail
cd "$(dirname "$0")/.."
NEW_TREE=$(pwd)
OLD_REV=${OLD_REV:-9e2de62}
OLD_TREE=${OLD_TREE:-$(dirname "$NEW_TREE")/pluto2-$OLD_REV}
REPS=${REPS:-3}
SECS=${SECS:-10}
export CARGO_INCREMENTAL=0
steps=${*:-node flood hello}

uptime_line() { echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"; }

enough_disk() {
  local free_kb
  free_kb=$(df -Pk / | awk 'NR==2 {print $4}')
  if ((free_kb < 10 * 1024 * 1024)); then
    echo "less than 10 GB free on /: not building" >&2
    exit 1
  fi
}

if [[ " $steps " == *" node "* || " $steps " == *" flood "* ]]; then
  if [[ ! -e $OLD_TREE ]]; then
    git worktree add --detach "$OLD_TREE" "$OLD_REV"
  fi
  enough_disk
  (cd "$OLD_TREE" && cargo bench --bench mixnet_node --no-run --quiet)
fi
enough_disk
cargo bench --bench mixnet_node --bench link_flood --bench link_hello --no-run --quiet

for step in $steps; do
  case $step in
  node)
    out=$(mktemp)
    for i in $(seq "$REPS"); do
      for tree in old new; do
        dir=$NEW_TREE
        [[ $tree == old ]] && dir=$OLD_TREE
        line=$(cd "$dir" && RUNS=1 cargo bench --quiet --bench mixnet_node 2>/dev/null |
          grep -E '^run 1:|spool-committer' | tr -s ' ' | paste -sd' ')
        echo "$i $tree $(uptime_line) ${line#run 1: }" | tee -a "$out"
      done
    done
    python3 - "$out" <<'EOF'
import re, statistics, sys
rate, cpu, com = ({"old": [], "new": []} for _ in range(3))
for line in open(sys.argv[1]):
    tree = line.split()[1]
    rate[tree].append(float(re.search(r"node (\d+) packets/s", line).group(1)))
    cpu[tree].append(float(re.search(r"= (\d+) µs/packet", line).group(1)))
    com[tree].append(float(re.search(r"spool-committer [\d.]+ s \((\d+) µs/packet", line).group(1)))
m, c, k = ({t: statistics.median(x[t]) for t in x} for x in (rate, cpu, com))
for t in ("old", "new"):
    print(f"{t}: node packets/s {rate[t]} median {m[t]:.0f}; node CPU µs/packet {cpu[t]} median {c[t]:.0f}, of it spool-committer {com[t]} median {k[t]:.0f}")
print(f"new ÷ old: packets/s {m['new'] / m['old']:.2f}, CPU per packet {c['new'] / c['old']:.2f}, committer per packet {k['new'] / k['old']:.2f}")
EOF
    rm -f "$out"
    ;;
  flood)
    uptime_line
    OLD_BIN=$OLD_TREE/target/release/pluto2 RUNS=$REPS SECS=$SECS \
      cargo bench --quiet --bench link_flood 2>/dev/null
    ;;
  hello)
    uptime_line
    # Criterion's "time:" line is a mean; its median is in estimates.json.
    cargo bench --quiet --bench link_hello 2>/dev/null | grep -E 'handshakes|^run|^medians'
    python3 - <<'EOF'
import json
med = {}
for n in ["hello/listener", "hello/dialler", "ed25519/sign", "ed25519/verify_strict"]:
    with open(f"target/criterion/{n}/new/estimates.json") as f:
        med[n] = json.load(f)["median"]["point_estimate"] / 1000.0
    print(f"{n}: median {med[n]:.1f} µs")
ref = med["ed25519/sign"] + med["ed25519/verify_strict"]
for side in ("listener", "dialler"):
    print(f"hello/{side} ÷ (sign + verify_strict): {med['hello/' + side] / ref:.2f}")
EOF
    ;;
  *)
    echo "unknown step $step (node, flood, hello)" >&2
    exit 64
    ;;
  esac
done
