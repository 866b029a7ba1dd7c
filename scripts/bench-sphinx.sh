#!/usr/bin/env bash
# Sphinx work per hop against the crate's own processing and the primitives
# underneath (benches/sphinx.rs), as ratios of criterion medians.
#
#   bash scripts/bench-sphinx.sh            # 3 runs of `cargo bench --bench sphinx`
#   REPS=5 bash scripts/bench-sphinx.sh
#
# Criterion's "time:" line shows the mean; this script reads each
# benchmark's median (target/criterion/*/new/estimates.json) after every
# run, prints them per run, then the median over runs and the ratios
# hop/pluto2 ÷ primitives and hop/crate ÷ primitives (goal for pluto2:
# ≤ 1.3). Bounded: REPS runs of about 25 s each after the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}

cargo bench --bench sphinx --no-run --quiet
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for i in $(seq "$REPS"); do
  cargo bench --quiet --bench sphinx >/dev/null 2>&1
  python3 - "$i" >>"$out" <<'EOF'
import json, sys
names = ["hop/pluto2", "hop/crate", "primitives", "build_3-hop"]
vals = []
for n in names:
    with open(f"target/criterion/{n}/new/estimates.json") as f:
        vals.append(json.load(f)["median"]["point_estimate"] / 1000.0)
print(sys.argv[1], *("%.1f" % v for v in vals))
EOF
  tail -n 1 "$out"
done
python3 - "$out" <<'EOF'
import statistics, sys
rows = [list(map(float, line.split()[1:])) for line in open(sys.argv[1])]
med = [statistics.median(col) for col in zip(*rows)]
print("run  hop/pluto2  hop/crate  primitives  build/3-hop  (medians, µs)")
for i, r in enumerate(rows, 1):
    print(f"{i:>3}  {r[0]:>10.1f}  {r[1]:>9.1f}  {r[2]:>10.1f}  {r[3]:>11.1f}   ratios {r[0]/r[2]:.2f} {r[1]/r[2]:.2f}")
print(f"med  {med[0]:>10.1f}  {med[1]:>9.1f}  {med[2]:>10.1f}  {med[3]:>11.1f}   "
      f"hop/pluto2 ÷ primitives {med[0]/med[2]:.2f}, hop/crate ÷ primitives {med[1]/med[2]:.2f}")
EOF
