#!/usr/bin/env python3
"""The cost of one `/metrics` scrape (issue 12).

    python3 scripts/bench-scrape.py target/release/pluto2

Starts the binary on 127.0.0.1 with `-metrics 127.0.0.1:0` and a throwaway
data dir, queues MESSAGES messages for an onion recipient (delivery is
parked: Tor points at the discard port, so they stay in the spool and the
queue gauges have rows to count), then times SCRAPES scrapes one after
another, each on a fresh connection (connect, GET, read to the close): a
scrape reads the spool's counts (through the spool's one reader
connection, since issue 17) and renders the registry. Prints the median and 90th percentile latency, the
response size, and the daemon's CPU time spent per scrape (utime + stime
from /proc before and after, divided by SCRAPES).
"""
from benchutil import onion_name, start_pluto2  # noqa: E402 (same folder)
import os
import socket
import statistics
import sys
import tempfile
import time

SCRAPES = int(os.environ.get("SCRAPES", "500"))
MESSAGES = int(os.environ.get("MESSAGES", "200"))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based) of the whole line.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def smtp_send(addr, n: int) -> None:
    to = "bench@" + onion_name(1)
    with socket.create_connection(addr) as s:
        f = s.makefile("rwb")

        def cmd(line: str) -> bytes:
            f.write(line.encode() + b"\r\n")
            f.flush()
            reply = f.readline()
            while reply[3:4] == b"-":
                reply = f.readline()
            return reply

        f.readline()
        cmd("EHLO bench.example")
        for i in range(n):
            assert cmd("MAIL FROM:<a@example.net>").startswith(b"250")
            assert cmd(f"RCPT TO:<{to}>").startswith(b"250")
            assert cmd("DATA").startswith(b"354")
            assert cmd(f"Subject: {i}\r\n\r\nbody {i}\r\n.").startswith(b"250")
        cmd("QUIT")


def scrape(addr) -> int:
    with socket.create_connection(addr) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        size = 0
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return size
            size += len(chunk)


def main() -> None:
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/pluto2"
    with tempfile.TemporaryDirectory() as data:
        proc, addr = start_pluto2(
            binary, data, "-metrics", "127.0.0.1:0", "-batch-window", "0",
            "-rate-limit", "1000000", "-delivery-timeout", "1h")
        try:
            metrics = None
            for line in proc.log_lines:
                if "[METRICS] serving" in line:
                    host, port = line.rsplit(" on ", 1)[1].strip().rsplit(":", 1)
                    metrics = (host, int(port))
            assert metrics, "no [METRICS] line"
            smtp_send(addr, MESSAGES)
            for _ in range(20):
                scrape(metrics)  # warm-up
            before = cpu_seconds(proc.pid)
            times = []
            size = 0
            for _ in range(SCRAPES):
                t = time.perf_counter()
                size = scrape(metrics)
                times.append(time.perf_counter() - t)
            cpu = cpu_seconds(proc.pid) - before
            times.sort()
            print(f"scrapes: {SCRAPES}, messages in the spool: {MESSAGES}")
            print(f"latency median {statistics.median(times) * 1e3:.2f} ms, "
                  f"p90 {times[int(len(times) * 0.9)] * 1e3:.2f} ms")
            print(f"response {size} bytes; daemon CPU per scrape "
                  f"{cpu / SCRAPES * 1e3:.2f} ms")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
