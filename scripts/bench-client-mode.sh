#!/usr/bin/env bash
# Figures for BENCHMARKS.md "Client mode (issue 19)": benches/client_mode.rs
# in the bench profile (release), all four parts, or those named in PARTS
# (latency, idle, held, gateway). Bounded: a fixed count of messages (N per
# side), a fixed idle time (IDLE_SECS), a fixed count of packets (PACKETS per
# phase, RUNS runs), every wait with a deadline, and the whole run under
# `timeout`; everything on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL=0
uptime
PARTS="${PARTS:-latency,idle,held,gateway}" N="${N:-30}" IDLE_SECS="${IDLE_SECS:-30}" \
  RUNS="${RUNS:-5}" PACKETS="${PACKETS:-8000}" CLIENTS="${CLIENTS:-100}" \
  NODE_LINKS="${NODE_LINKS:-4}" REPLIES="${REPLIES:-1000}" \
  timeout "${LIMIT:-1800}" cargo bench --bench client_mode
uptime
