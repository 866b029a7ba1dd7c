#!/usr/bin/env python3
"""Memory under unfinished DATA (issue 9): RSS while CLIENTS sessions each
hold BODY_MIB of a message body without sending the final dot, and whether a
small message from another client still gets 250 meanwhile.

    python3 scripts/dos-memory.py target/release/pluto2

Starts the binary on 127.0.0.1 (defaults, except -max-connections 1000 and
-rate-limit 1000000 so that neither refuses the load, and a throwaway data
dir in /var/tmp). Every client runs EHLO, MAIL, RCPT, DATA and then sends
BODY_MIB of body lines at full speed and stops. Once all have sent, the
script samples VmRSS for HOLD seconds, sends one small message from a new
client, reads the peak (VmHWM), then sends the final dot for every client
and counts the replies (250 = fitted the budget, 452 4.3.1 = refused).
Bounded: at most LIMIT seconds, only 127.0.0.1.
"""
from benchutil import hwm_kib, onion_name, rss_kib, start_pluto2  # noqa: E402
import os
import resource
import smtplib
import socket
import sys
import tempfile
import threading
import time

CLIENTS = int(os.environ.get("CLIENTS", "300"))
BODY_MIB = float(os.environ.get("BODY_MIB", "9.9"))
HOLD = float(os.environ.get("HOLD", "5"))
LIMIT = float(os.environ.get("LIMIT", "600"))
EXTRA = os.environ.get("EXTRA", "").split()

LINE = b"x" * 998 + b"\r\n"


def expect(f, code: bytes) -> bytes:
    line = b""
    while True:
        line = f.readline()
        if not line:
            raise RuntimeError("closed")
        if line[3:4] != b"-":
            break
    if not line.startswith(code):
        raise RuntimeError(f"expected {code!r}, got {line!r}")
    return line


def hold(n: int, addr, rcpt: str, ready: threading.Barrier, finish: threading.Event, out: list) -> None:
    try:
        s = socket.create_connection(addr, timeout=LIMIT)
        f = s.makefile("rb")
        expect(f, b"220")
        s.sendall(b"EHLO load.example\r\n")
        expect(f, b"250")
        s.sendall(b"MAIL FROM:<load@example.org>\r\n")
        expect(f, b"250")
        s.sendall(f"RCPT TO:<{rcpt}>\r\n".encode())
        expect(f, b"250")
        s.sendall(b"DATA\r\n")
        expect(f, b"354")
        # A header of its own, or the replay check would refuse copies.
        head = f"Subject: load {n}\r\n\r\n".encode()
        s.sendall(head)
        chunk = LINE * 64
        left = int(BODY_MIB * 1024 * 1024) - len(head)
        while left > 0:
            part = chunk[:left]
            s.sendall(part)
            left -= len(part)
        s.sendall(b"\r\n")
    except Exception as e:  # noqa: BLE001 (reported, not hidden)
        out.append(f"error before the dot: {e}")
        ready.wait()
        return
    ready.wait()
    finish.wait()
    try:
        s.sendall(b".\r\n")
        out.append(expect(f, b"").decode().strip())
        s.sendall(b"QUIT\r\n")
    except Exception as e:  # noqa: BLE001
        out.append(f"error after the dot: {e}")
    s.close()


def main() -> None:
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/pluto2"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < CLIENTS * 2 + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(CLIENTS * 2 + 100, hard), hard))
    start = time.monotonic()
    rcpt = "load@" + onion_name(1)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as data:
        proc, addr = start_pluto2(binary, data, "-max-connections", "1000",
                                  "-rate-limit", "1000000", *EXTRA)
        try:
            time.sleep(0.5)
            idle = rss_kib(proc.pid)
            ready = threading.Barrier(CLIENTS + 1, timeout=LIMIT)
            finish = threading.Event()
            results: list = []
            threads = [threading.Thread(target=hold, args=(n, addr, rcpt, ready, finish, results),
                                        daemon=True) for n in range(CLIENTS)]
            for t in threads:
                t.start()
            ready.wait()
            sent = time.monotonic() - start
            # The daemon may still be reading what the kernel buffered.
            samples = []
            t_end = time.monotonic() + HOLD
            while time.monotonic() < t_end:
                samples.append(rss_kib(proc.pid))
                time.sleep(0.1)
            small_start = time.monotonic()
            with smtplib.SMTP(addr[0], addr[1], timeout=60) as smtp:
                smtp.ehlo("small.example")
                code, _ = smtp.docmd("MAIL", "FROM:<small@example.org>")
                smtp.docmd("RCPT", f"TO:<{rcpt}>")
                code, reply = smtp.data(b"Subject: small\r\n\r\nhello\r\n")
            small = f"{code} {reply.decode()} in {time.monotonic() - small_start:.2f} s"
            loaded = rss_kib(proc.pid)
            peak = hwm_kib(proc.pid)
            finish.set()
            for t in threads:
                t.join(timeout=max(1, LIMIT - (time.monotonic() - start)))
            if time.monotonic() - start > LIMIT:
                sys.exit("time limit reached")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    codes: dict = {}
    for r in results:
        key = r[:9] if r[:1].isdigit() else r
        codes[key] = codes.get(key, 0) + 1
    print(f"clients: {CLIENTS} x {BODY_MIB} MiB unfinished DATA (all sent after {sent:.1f} s)")
    print(f"idle RSS: {idle / 1024:.1f} MiB")
    print(f"RSS while held: max sample {max(samples) / 1024:.1f} MiB, at the end {loaded / 1024:.1f} MiB")
    print(f"peak RSS (VmHWM) over the whole run: {peak / 1024:.1f} MiB")
    print(f"small message from another client meanwhile: {small}")
    print(f"replies to the final dot: {codes}")
    budget = [l for l in proc.log_lines if "-data-memory" in l]
    print(f"log lines about -data-memory: {len(budget)}")


if __name__ == "__main__":
    main()
