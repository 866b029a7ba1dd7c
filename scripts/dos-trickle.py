#!/usr/bin/env python3
"""Slow clients (issue 9): while 2 x -max-connections sockets trickle one
byte every TRICKLE_GAP seconds for DURATION seconds (reconnecting at once
whenever they are closed), one normal client tries a transaction every
PACE seconds; the script reports how many of them completed with 250.

    python3 scripts/dos-trickle.py target/release/pluto2

pluto2 runs on 127.0.0.1 with -max-connections MAX (50: small, so that the
load script stays small) and -rate-limit 1000000 (the tricklers all come
from 127.0.0.1, as Tor clients without -proxy-protocol do; the rate limit
is not what is measured here). Each normal transaction is a new connection
(EHLO, MAIL, RCPT, DATA with a 1 KiB body, QUIT), with a 10 s timeout; it
counts as completed when the final dot gets 250. Bounded: DURATION + 30 s,
only 127.0.0.1.
"""
from benchutil import onion_name, start_pluto2  # noqa: E402
import os
import smtplib
import socket
import sys
import tempfile
import threading
import time

MAX = int(os.environ.get("MAX", "50"))
TRICKLERS = int(os.environ.get("TRICKLERS", str(2 * MAX)))
DURATION = float(os.environ.get("DURATION", "60"))
TRICKLE_GAP = float(os.environ.get("TRICKLE_GAP", "2"))
PACE = float(os.environ.get("PACE", "0.5"))
EXTRA = os.environ.get("EXTRA", "").split()

SCRIPT = b"EHLO trickle.example\r\n" + b"NOOP\r\n" * 1000


def trickle(addr, end: float, stats: dict, lock: threading.Lock) -> None:
    while time.monotonic() < end:
        try:
            s = socket.create_connection(addr, timeout=5)
        except OSError:
            time.sleep(0.05)
            continue
        with lock:
            stats["connections"] += 1
        i = 0
        try:
            while time.monotonic() < end:
                s.sendall(SCRIPT[i % len(SCRIPT):i % len(SCRIPT) + 1])
                i += 1
                s.settimeout(TRICKLE_GAP)
                try:
                    got = s.recv(4096)
                except socket.timeout:
                    continue
                if not got or b"421" in got:
                    if b"421" in got:
                        with lock:
                            stats["told_421"] += 1
                    break
                # Other replies (220, 250): keep going after the gap.
                time.sleep(TRICKLE_GAP)
        except OSError:
            pass
        s.close()


def transaction(addr, rcpt: str, body: str) -> str:
    try:
        with smtplib.SMTP(addr[0], addr[1], timeout=10) as smtp:
            smtp.ehlo("normal.example")
            code, _ = smtp.docmd("MAIL", "FROM:<normal@example.org>")
            if code != 250:
                return f"MAIL {code}"
            code, _ = smtp.docmd("RCPT", f"TO:<{rcpt}>")
            if code != 250:
                return f"RCPT {code}"
            code, _ = smtp.data(body.encode())
            return "ok" if code == 250 else f"dot {code}"
    except smtplib.SMTPServerDisconnected as e:
        return f"disconnected: {e}"
    except (OSError, smtplib.SMTPException) as e:
        return f"{type(e).__name__}: {e}"


def main() -> None:
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/pluto2"
    rcpt = "normal@" + onion_name(1)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as data:
        proc, addr = start_pluto2(binary, data, "-max-connections", str(MAX),
                                  "-rate-limit", "1000000", *EXTRA)
        try:
            end = time.monotonic() + DURATION
            stats = {"connections": 0, "told_421": 0}
            lock = threading.Lock()
            threads = [threading.Thread(target=trickle, args=(addr, end, stats, lock), daemon=True)
                       for _ in range(TRICKLERS)]
            for t in threads:
                t.start()
            time.sleep(min(5.0, DURATION / 4))  # let the tricklers fill the table first
            outcomes: dict = {}
            attempts = 0
            n = 0
            while time.monotonic() < end - 1:
                n += 1
                body = f"Subject: normal {n}\r\n\r\n" + "y" * 1024
                attempts += 1
                r = transaction(addr, rcpt, body)
                key = r if r == "ok" else r[:40]
                outcomes[key] = outcomes.get(key, 0) + 1
                time.sleep(PACE)
            for t in threads:
                t.join(timeout=max(1.0, end + 30 - time.monotonic()))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    ok = outcomes.get("ok", 0)
    print(f"-max-connections {MAX}, {TRICKLERS} trickling sockets (a byte every {TRICKLE_GAP} s), "
          f"{DURATION:.0f} s")
    print(f"trickler connections opened: {stats['connections']}, told 421: {stats['told_421']}")
    print(f"normal transactions: {ok}/{attempts} completed ({100.0 * ok / max(1, attempts):.1f} %)")
    print(f"outcomes: {outcomes}")
    sheds = [l.strip() for l in proc.log_lines if "shed" in l]
    print(f"shed log lines: {len(sheds)}")


if __name__ == "__main__":
    main()
