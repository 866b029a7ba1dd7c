#!/usr/bin/env bash
# The private Tor network's bootstrap time, as tests/tor_network.rs builds
# it on 127.0.0.1 from Debian's tor (3 authorities, 2 relays, an exit, a
# client tor, a tor hosting an onion service): seconds from the first tor
# started to the client and the service tor at bootstrap 100 %, and to the
# onion service answering 220 through the client's SocksPort.
#
#   bash scripts/bench-tor-bootstrap.sh        # 5 runs
#   REPS=3 bash scripts/bench-tor-bootstrap.sh
#
# Each run is the ignored test `bench_bootstrap` (a fresh network in fresh
# DataDirectories, stopped by pid file at the end); bounded by its own
# deadlines (120 s to bootstrap, 90 s to reach the onion). Prints each run
# and the medians. Needs Debian's tor (scripts/test.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-5}

cargo test --quiet --test tor_network --no-run
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for i in $(seq "$REPS"); do
  start=$(date +%s.%N)
  line=$(cargo test --quiet --test tor_network -- --ignored --exact bench_bootstrap --nocapture 2>/dev/null \
    | grep '^BOOTSTRAP ')
  end=$(date +%s.%N)
  echo "$i $line total_s=$(python3 -c "print(f'{$end - $start:.1f}')")" | tee -a "$out"
done
python3 - "$out" <<'PY'
import statistics, sys
rows = []
for line in open(sys.argv[1]):
    kv = dict(w.split("=") for w in line.split() if "=" in w)
    rows.append({k: float(v) for k, v in kv.items()})
for key in ("bootstrap_s", "onion_reachable_s", "total_s"):
    vals = [r[key] for r in rows]
    print(f"median {key} = {statistics.median(vals):.1f}  (min {min(vals):.1f}, max {max(vals):.1f}, n={len(vals)})")
PY
