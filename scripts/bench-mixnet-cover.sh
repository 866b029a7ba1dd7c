#!/usr/bin/env bash
# Figures for BENCHMARKS.md "Mixnet cover": a 5-node pluto2 mixnet on
# 127.0.0.1 (release build), idle with the default cover for IDLE_SECS
# (CPU and RSS per node), then with cover 60x faster for at most 60 s
# (bytes on the links per node, scaled back to the default rates).
# Bounded: two networks, fixed durations, everything on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE_SECS="${IDLE_SECS:-120}" cargo test --release --test mixnet_control \
  -- --ignored --nocapture bench_cover_cost 2>&1 | grep -E "idle|loops sent|cover at"
