#!/usr/bin/env python3
"""End-to-end relay benchmark: client -> pluto2 -> SOCKS5 -> SMTP sink.

    python3 scripts/bench-relay.py [target/release/pluto2]

Everything runs on 127.0.0.1: Debian's microsocks as the SOCKS5 proxy (it
stands in for Tor), a small DNS-over-TCP server answering the MX lookup
pluto2 makes through the proxy, and an asyncio SMTP sink that timestamps
every arriving message. This is the relay path alone: mixing and cover are off (-batch-window 0, -cover-interval 0);
sanitizing and padding to 8 KiB stay on, as in production.

1. Throughput: Postfix's smtp-source sends MESSAGES messages from 20
   sessions; the clock stops when the sink has all of them. The reference
   is the same smtp-source run straight into the same sink.
2. Added latency: one client sends messages one at a time; for each, the
   time from the final "." to the sink's arrival is measured, through
   pluto2 and directly; the difference of the medians/p99s is what pluto2
   adds (durable commit, dispatch, SOCKS handshake, outbound SMTP).
"""
from benchutil import onion_name  # same folder
import asyncio
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

MESSAGES = int(os.environ.get("MESSAGES", "2000"))
LATENCY_SAMPLES = int(os.environ.get("LATENCY_SAMPLES", "300"))
REPS = int(os.environ.get("REPS", "3"))
DOMAIN = b"bench.example"




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- DNS over TCP: every MX question gets "10 127.0.0.1." ------------------
async def dns_client(reader, writer):
    try:
        while True:
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            query = await reader.readexactly(size)
            qid = query[:2]
            end = 12
            while query[end] != 0:
                end += query[end] + 1
            question = query[12:end + 5]
            exchange = b"".join(bytes([len(p)]) + p for p in b"127.0.0.1".split(b".")) + b"\x00"
            rdata = struct.pack("!H", 10) + exchange
            answer = b"\xc0\x0c" + struct.pack("!HHIH", 15, 1, 300, len(rdata)) + rdata
            reply = qid + b"\x81\x80" + struct.pack("!HHHH", 1, 1, 0, 0) + question + answer
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        writer.close()


# --- SOCKS5 proxy with TCP_NODELAY (Tor's role, minus Tor) -----------------
async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def socks_client(reader, writer):
    try:
        _, n = await reader.readexactly(2)
        methods = await reader.readexactly(n)
        if 2 in methods:
            writer.write(b"\x05\x02")
            await writer.drain()
            _, ulen = await reader.readexactly(2)
            await reader.readexactly(ulen)
            plen = (await reader.readexactly(1))[0]
            await reader.readexactly(plen)
            writer.write(b"\x01\x00")
        else:
            writer.write(b"\x05\x00")
        head = await reader.readexactly(4)
        if head[3] == 1:
            host = socket.inet_ntoa(await reader.readexactly(4))
        else:
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
        port = struct.unpack("!H", await reader.readexactly(2))[0]
        up_reader, up_writer = await asyncio.open_connection(host, port)
        for w in (writer, up_writer):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")
        await writer.drain()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        writer.close()


# --- SMTP sink that timestamps arrivals -------------------------------------
class Sink:
    def __init__(self):
        self.count = 0
        self.arrivals = {}
        self.changed = asyncio.Event()

    async def client(self, reader, writer):
        writer.write(b"220 sink ESMTP\r\n")
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                cmd = line.strip().upper()
                if cmd.startswith(b"EHLO"):
                    writer.write(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif cmd == b"DATA":
                    writer.write(b"354 go\r\n")
                    await writer.drain()
                    tag = None
                    while True:
                        body = await reader.readline()
                        if body == b".\r\n" or not body:
                            break
                        # The tag rides in the Subject: sanitizing keeps it.
                        if body.startswith(b"Subject: bench "):
                            tag = body[15:].strip().decode()
                    now = time.monotonic()
                    self.count += 1
                    if tag is not None:
                        self.arrivals[tag] = now
                    self.changed.set()
                    writer.write(b"250 ok\r\n")
                elif cmd == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def wait_count(self, n, limit=120):
        deadline = time.monotonic() + limit
        while self.count < n:
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SystemExit(f"sink got {self.count} of {n} messages")
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_tag(self, tag, limit=60):
        deadline = time.monotonic() + limit
        while tag not in self.arrivals:
            self.changed.clear()
            if time.monotonic() > deadline:
                raise SystemExit(f"message {tag} never arrived")
            try:
                await asyncio.wait_for(self.changed.wait(), 1)
            except asyncio.TimeoutError:
                pass


async def expect(reader, code):
    while True:
        line = await reader.readline()
        if not line:
            raise SystemExit("server closed the connection")
        if line[3:4] != b"-":
            if not line.startswith(code):
                raise SystemExit(f"expected {code!r}, got {line!r}")
            return


async def latency_run(port, sink, prefix):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await expect(reader, b"220")
    writer.write(b"EHLO bench\r\n")
    await expect(reader, b"250")
    samples = []
    for i in range(LATENCY_SAMPLES):
        tag = f"{prefix}-{i}"
        writer.write(b"MAIL FROM:<b@example.net>\r\nRCPT TO:<r@" + DOMAIN + b">\r\nDATA\r\n")
        await expect(reader, b"250")
        await expect(reader, b"250")
        await expect(reader, b"354")
        body = f"Subject: bench {tag}\r\n\r\n" + "x" * 2000 + "\r\n.\r\n"
        writer.write(body.encode())
        sent = time.monotonic()
        await expect(reader, b"250")
        await sink.wait_tag(tag)
        samples.append((sink.arrivals[tag] - sent) * 1000)
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()
    return samples


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]


async def throughput(port, sink):
    start_count = sink.count
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "/usr/sbin/smtp-source", "-c", "-s", "20", "-m", str(MESSAGES), "-l", "4096",
        "-f", "b@example.net", "-t", "r@" + DOMAIN.decode(), f"127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"smtp-source failed: {err.decode()}")
    await sink.wait_count(start_count + MESSAGES)
    return MESSAGES / (time.monotonic() - start)


async def run_pluto2(binary, socks_port, dns_port, sink_port):
    data = tempfile.mkdtemp()
    daemon = subprocess.Popen(
        [binary, "-name", onion_name(), "-addr", "127.0.0.1:0", "-data-dir", data,
         "-rate-limit", "100000000", "-tor-socks", f"127.0.0.1:{socks_port}",
         "-dns-server", f"127.0.0.1:{dns_port}", "-smtp-port", str(sink_port),
         "-replay-window", "0", "-batch-window", "0", "-cover-interval", "0"],
        stderr=subprocess.PIPE, text=True)
    while True:
        line = await asyncio.to_thread(daemon.stderr.readline)
        if not line:
            raise SystemExit("pluto2 exited")
        if "listening on " in line:
            port = int(line.rsplit(":", 1)[1])
            break
    # Keep draining the log so the daemon never blocks on a full pipe.
    asyncio.get_running_loop().run_in_executor(None, lambda: [None for _ in daemon.stderr])
    return daemon, port, data


def report(label, via, direct, lat_via, lat_direct):
    mv, md = statistics.median(via), statistics.median(direct)
    print(f"## {label}")
    print(f"throughput, 20 sessions, 4 KiB, {MESSAGES} messages, median of {REPS}:")
    print(f"  through pluto2 + SOCKS: {mv:.0f} msg/s   (runs: {', '.join(f'{x:.0f}' for x in via)})")
    print(f"  straight into the sink: {md:.0f} msg/s   (runs: {', '.join(f'{x:.0f}' for x in direct)})")
    print(f"  ratio: {mv / md:.3f}")
    print(f"latency from final '.' to arrival, {LATENCY_SAMPLES} sequential messages:")
    print(f"  through pluto2: median {statistics.median(lat_via):.2f} ms, p99 {p99(lat_via):.2f} ms")
    print(f"  direct:         median {statistics.median(lat_direct):.2f} ms, p99 {p99(lat_direct):.2f} ms")
    print(f"  added by pluto2 + proxy: median {statistics.median(lat_via) - statistics.median(lat_direct):.2f} ms, "
          f"p99 {p99(lat_via) - p99(lat_direct):.2f} ms")
    print()


async def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/pluto2"
    for tool in ("microsocks", "/usr/sbin/smtp-source"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing (apt-get install microsocks postfix)")
    sink = Sink()
    servers = [await asyncio.start_server(sink.client, "127.0.0.1", 0),
               await asyncio.start_server(dns_client, "127.0.0.1", 0),
               await asyncio.start_server(socks_client, "127.0.0.1", 0)]
    sink_port, dns_port, nodelay_port = (srv.sockets[0].getsockname()[1] for srv in servers)
    ms_port = free_port()
    microsocks = subprocess.Popen(["microsocks", "-i", "127.0.0.1", "-p", str(ms_port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for label, socks_port in (("in-script SOCKS5 proxy with TCP_NODELAY", nodelay_port),
                                  ("Debian's microsocks (no TCP_NODELAY)", ms_port)):
            daemon, port, data = await run_pluto2(binary, socks_port, dns_port, sink_port)
            try:
                via, direct = [], []
                for _ in range(REPS):
                    via.append(await throughput(port, sink))
                    direct.append(await throughput(sink_port, sink))
                lat_via = await latency_run(port, sink, f"via-{socks_port}")
                lat_direct = await latency_run(sink_port, sink, f"direct-{socks_port}")
            finally:
                daemon.terminate()
                daemon.wait(timeout=30)
                shutil.rmtree(data, ignore_errors=True)
            report(label, via, direct, lat_via, lat_direct)
    finally:
        microsocks.terminate()
        microsocks.wait(timeout=30)
        # Connection handlers still running at exit are cancelled; that is
        # the end of the run, not an error worth a traceback.
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)


if __name__ == "__main__":
    asyncio.run(main())
