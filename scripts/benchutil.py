"""Helpers shared by the benchmark scripts in this folder."""
import base64
import hashlib


# Real ed25519 public keys without torsion (OnionName::from_seed(1..=3) in
# the Rust code): pluto2 refuses onion names whose key Tor would refuse.
KEYS = [
    "2a147fc0726e5bc2e07e91d9a309197bcab21705568db0be14fb20bd88d2bccc",
    "a01b6240e815571b6c1aacc29efba4e9048da53badfeeecb33a78aee0a605a83",
    "12695e5315ad231ad385220d41c2db5794d284c70ad8ab7c0ca4c8113c5de8c9",
]


def onion_name(seed: int = 0) -> str:
    """A valid v3 onion name (fixed key) for a local pluto2 under test;
    another seed (up to 2) gives another name (a recipient that is not the
    node)."""
    key = bytes.fromhex(KEYS[seed])
    check = hashlib.sha3_256(b".onion checksum" + key + b"\x03").digest()[:2]
    return base64.b32encode(key + check + b"\x03").decode().lower() + ".onion"


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start_pluto2(binary: str, data_dir: str, *flags: str):
    """Starts pluto2 on 127.0.0.1 (an ephemeral port, Tor pointed at the
    discard port so nothing leaves) and returns (process, (host, port)).
    Its log is drained by a thread and kept in process.log_lines."""
    import subprocess
    import threading
    import time
    proc = subprocess.Popen(
        [binary, "-name", onion_name(), "-addr", "127.0.0.1:0", "-data-dir", data_dir,
         "-tor-socks", "127.0.0.1:9", "-dns-server", "127.0.0.1:9", "-cover-interval", "0",
         *flags],
        stderr=subprocess.PIPE, text=True)
    addr = None
    deadline = time.monotonic() + 30
    proc.log_lines = []
    while addr is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        proc.log_lines.append(line)
        if "listening on " in line:
            host, port = line.rsplit("listening on ", 1)[1].strip().rsplit(":", 1)
            addr = (host, int(port))
    if addr is None:
        proc.kill()
        raise SystemExit("pluto2 did not start: " + "".join(proc.log_lines))

    def drain() -> None:
        for line in proc.stderr:
            proc.log_lines.append(line)
    threading.Thread(target=drain, daemon=True).start()
    return proc, addr


def hwm_kib(pid: int) -> int:
    """Peak resident set size of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")
