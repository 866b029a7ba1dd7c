#!/usr/bin/env python3
"""Memory per queued message in the mix pool.

    python3 scripts/pool-memory.py target/release/pluto2

Starts pluto2 with the long delay pool (nothing is due for an hour, and the
SOCKS port is dead anyway), measures VmRSS, queues 10,000 messages of 4 KiB
with Postfix's smtp-source (20 sessions), and measures VmRSS and the spool
file size again. The pool keeps its state in the spool, not in memory, so
RSS should barely move while the disk grows by about one message each.
"""
from benchutil import onion_name, rss_kib  # noqa: E402 (same folder)
import json
import os
import subprocess
import sys
import tempfile

COUNT = int(os.environ.get("COUNT", "10000"))






def main() -> None:
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/pluto2"
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            [binary, "-name", onion_name(), "-addr", "127.0.0.1:0", "-data-dir", data,
             "-rate-limit", "100000000", "-tor-socks", "127.0.0.1:9", "-cover-interval", "0",
             "-delay", "-min-delay", "1h", "-max-delay", "2h"],
            stderr=subprocess.PIPE, text=True)
        try:
            port = None
            while port is None:
                line = proc.stderr.readline()
                if not line:
                    sys.exit("pluto2 exited")
                if "listening on " in line:
                    port = line.rsplit(":", 1)[1].strip()
            before = rss_kib(proc.pid)
            subprocess.run(["/usr/sbin/smtp-source", "-c", "-s", "20", "-m", str(COUNT), "-l", "4096",
                            "-f", "a@example.net", "-t", "r@example.org", f"127.0.0.1:{port}"],
                           check=True, stdout=subprocess.DEVNULL)
            after = rss_kib(proc.pid)
            report = json.loads(subprocess.run([binary, "queue", "-data-dir", data, "-json"],
                                               check=True, capture_output=True, text=True).stdout)
            files = sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    queued = report["messages"]
    print(f"queued messages: {queued}")
    print(f"RSS before: {before} KiB, after: {after} KiB, "
          f"{(after - before) * 1024 / max(queued, 1):.0f} bytes of RAM per queued message")
    print(f"spool files: {files / 1048576:.1f} MiB, {files / max(queued, 1):.0f} bytes on disk per queued message")


if __name__ == "__main__":
    main()
