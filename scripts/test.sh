#!/usr/bin/env bash
# The one test command (see README.md). Installs the real SMTP peers the
# integration tests use, then checks formatting, lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v swaks >/dev/null || need+=(swaks)
[ -x /usr/sbin/smtp-source ] || need+=(postfix)
command -v strace >/dev/null || need+=(strace)
command -v nc >/dev/null || need+=(netcat-openbsd)
command -v ss >/dev/null || need+=(iproute2)
command -v microsocks >/dev/null || need+=(microsocks)
# tests/tor_network.rs runs a private Tor network on 127.0.0.1.
{ command -v tor >/dev/null && command -v tor-gencert >/dev/null; } || need+=(tor)
# systemd-analyze verify/security on contrib/pluto2.service (tests/systemd.rs);
# the package installs in a container too, systemd need not be PID 1.
[ -x /usr/bin/systemd-analyze ] || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  # Postfix asks how to configure itself; the tests only need its tools.
  echo 'postfix postfix/main_mailer_type select No configuration' | $SUDO debconf-set-selections
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  # The package starts a system tor on 9050 that reaches the real Tor
  # network; the tests start their own tors and never use it.
  if [[ " ${need[*]} " == *" tor "* ]] && command -v systemctl >/dev/null; then
    $SUDO systemctl disable --now tor >/dev/null 2>&1 || true
  fi
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
