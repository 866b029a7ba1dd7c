# Shared by bench-accept.sh and callgrind-accept.sh (sourced, not run):
# the two onion names every accept measurement uses, and the "SOCKS proxy"
# that parks pluto2's deliveries.

# A v3 onion name from a hex ed25519 key (checksum and version as Tor
# computes them). The keys below are valid points that Tor would not refuse;
# they are OnionName::from_seed(1) and (2) in the Rust code.
onion() {
  python3 - "$1" <<'PY'
import base64, hashlib, sys
key = bytes.fromhex(sys.argv[1])
check = hashlib.sha3_256(b".onion checksum" + key + b"\x03").digest()[:2]
print(base64.b32encode(key + check + b"\x03").decode().lower() + ".onion")
PY
}
name=$(onion 2a147fc0726e5bc2e07e91d9a309197bcab21705568db0be14fb20bd88d2bccc)
TO=sink@$(onion a01b6240e815571b6c1aacc29efba4e9048da53badfeeecb33a78aee0a605a83)

# start_hole FILE: a TCP listener on 127.0.0.1 that accepts connections into
# its backlog and never says a word, so a delivery attempt waits for
# -delivery-timeout; writes its port to FILE and sets hole_pid and hole_port.
start_hole() {
  python3 - "$1" <<'PY' &
import os, socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(512)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(s.getsockname()[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(3600)
PY
  hole_pid=$!
  for _ in $(seq 1 50); do [ -s "$1" ] && break; sleep 0.1; done
  hole_port=$(cat "$1")
}
