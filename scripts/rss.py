#!/usr/bin/env python3
"""Resident memory of pluto2: idle, and with 1,000 open idle SMTP sessions.

    python3 scripts/rss.py target/release/pluto2

Starts the binary on 127.0.0.1 with a throwaway data dir, reads VmRSS from
/proc, opens SESSIONS connections (each reads its 220 greeting, then stays
silent), reads VmRSS again, and closes everything.
"""
from benchutil import onion_name, rss_kib  # noqa: E402 (same folder)
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time

SESSIONS = int(os.environ.get("SESSIONS", "1000"))


def main() -> None:
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/pluto2"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = SESSIONS * 2 + 100
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            [binary, "-name", onion_name(), "-addr", "127.0.0.1:0", "-data-dir", data,
             "-max-connections", str(max(2000, SESSIONS * 2)), "-rate-limit", "1000000",
             "-idle-timeout", "10m", "-tor-socks", "127.0.0.1:9"],
            stderr=subprocess.PIPE, text=True)
        try:
            addr = None
            deadline = time.monotonic() + 30
            while addr is None and time.monotonic() < deadline:
                line = proc.stderr.readline()
                if "listening on " in line:
                    host, port = line.rsplit("listening on ", 1)[1].strip().rsplit(":", 1)
                    addr = (host, int(port))
            if addr is None:
                sys.exit("pluto2 did not start")
            # Keep reading its log so a full pipe can never stall the daemon.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            time.sleep(0.5)  # let startup work (spool open, first timers) settle
            idle = rss_kib(proc.pid)
            conns = []
            for _ in range(SESSIONS):
                s = socket.create_connection(addr, timeout=30)
                greeting = s.recv(512)
                if not greeting.startswith(b"220 "):
                    sys.exit(f"unexpected greeting {greeting!r}")
                conns.append(s)
            time.sleep(0.5)
            if proc.poll() is not None:
                sys.exit(f"pluto2 exited with status {proc.returncode}")
            loaded = rss_kib(proc.pid)
            for s in conns:
                s.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    per = (loaded - idle) / SESSIONS
    print(f"idle RSS: {idle} KiB")
    print(f"RSS with {SESSIONS} idle sessions: {loaded} KiB ({per:.1f} KiB per session)")


if __name__ == "__main__":
    main()
