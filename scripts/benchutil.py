"""Helpers shared by the benchmark scripts in this folder."""
import base64
import hashlib


def onion_name() -> str:
    """A valid v3 onion name (fixed key) for a local pluto2 under test.

    The key is a real ed25519 point without torsion (OnionName::from_seed(1)
    in the Rust code): pluto2 refuses names whose key Tor would refuse.
    """
    key = bytes.fromhex("2a147fc0726e5bc2e07e91d9a309197bcab21705568db0be14fb20bd88d2bccc")
    check = hashlib.sha3_256(b".onion checksum" + key + b"\x03").digest()[:2]
    return base64.b32encode(key + check + b"\x03").decode().lower() + ".onion"


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")
