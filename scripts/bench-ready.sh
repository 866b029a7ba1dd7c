#!/usr/bin/env bash
# Time from process start to systemd's READY=1, beside the time until the
# SMTP port accepts a connection (the reference: what READY promises).
#
#   bash scripts/bench-ready.sh            # N=21 runs, release build
#   N=51 BIN=target/debug/pluto2 bash scripts/bench-ready.sh
#
# Each run starts pluto2 on a fresh data directory (so the spool is created
# and migrated, the cover key made: the slowest start) with NOTIFY_SOCKET
# pointing at a datagram socket of this script, and measures from just
# before exec (monotonic clock) to (a) the READY=1 datagram and (b) the
# first successful connect to -addr, probed every 0.2 ms in a second
# thread. Tor and the resolver are a loopback port that refuses; only
# 127.0.0.1 is used. Prints the median and the 10th/90th percentile.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-21}
BIN=${BIN:-target/release/pluto2}
[ -x "$BIN" ] || cargo build --release --locked
exec python3 - "$BIN" "$N" <<'PY'
import os, socket, subprocess, sys, tempfile, threading, time

bin_, n = sys.argv[1], int(sys.argv[2])
name = "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion"

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def run():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path); sock.settimeout(30)
        port, refused = free_port(), free_port()
        accepted = []
        def probe(t0):
            while True:
                c = socket.socket()
                try:
                    c.connect(("127.0.0.1", port)); accepted.append(time.monotonic() - t0); return
                except OSError:
                    time.sleep(0.0002)
                finally:
                    c.close()
        env = dict(os.environ, NOTIFY_SOCKET=path)
        t0 = time.monotonic()
        p = subprocess.Popen([bin_, "-name", name, "-addr", f"127.0.0.1:{port}",
                              "-data-dir", os.path.join(d, "data"), "-cover-interval", "0",
                              "-tor-socks", f"127.0.0.1:{refused}", "-dns-server", f"127.0.0.1:{refused}"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        th = threading.Thread(target=probe, args=(t0,), daemon=True); th.start()
        while b"READY=1" not in sock.recv(4096):
            pass
        ready = time.monotonic() - t0
        th.join(30)
        p.terminate(); p.wait(30)
        return ready, accepted[0]

def pct(xs, q):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]

run()  # warm-up: page cache, binary
ready, accept = zip(*[run() for _ in range(n)])
ms = lambda x: f"{x * 1000:.1f} ms"
print(f"runs: {n}, binary: {bin_}")
print(f"start -> READY=1       median {ms(pct(ready, .5))}  p10 {ms(pct(ready, .1))}  p90 {ms(pct(ready, .9))}")
print(f"start -> port accepts  median {ms(pct(accept, .5))}  p10 {ms(pct(accept, .1))}  p90 {ms(pct(accept, .9))}")
PY
