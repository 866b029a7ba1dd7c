#!/usr/bin/env bash
# A private Postfix instance used as the benchmark reference: it listens on
# 127.0.0.1:PORT only, queues every message durably (cleanup fsyncs the
# queue file before smtpd answers 250) and then discards it.
#
#   scripts/postfix-reference.sh start PORT DIR
#   scripts/postfix-reference.sh stop  PORT DIR
set -euo pipefail
action=${1:?start|stop}; port=${2:?port}; dir=${3:?dir}
conf="$dir/etc"

install_postfix() {
  [ -x /usr/sbin/postfix ] && return
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  echo 'postfix postfix/main_mailer_type select No configuration' | $SUDO debconf-set-selections
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
}

case "$action" in
start)
  install_postfix
  mkdir -p "$conf" "$dir/queue" "$dir/data"
  chown postfix "$dir/data"
  cat > "$conf/main.cf" <<CONF
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = reference.example
mydomain = example
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
# Accept, queue durably, then throw away.
default_transport = discard:reference
relay_transport = discard:reference
local_transport = discard:reference
# No DNS work on the accept path, no per-client throttling.
smtpd_peername_lookup = no
smtp_host_lookup = native
disable_dns_lookups = yes
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
default_process_limit = 200
message_size_limit = 10485760
maillog_file_prefixes = $dir
maillog_file = $dir/maillog
biff = no
alias_maps =
alias_database =
local_recipient_maps =
CONF
  # Debian's master.cf with the SMTP listener moved to our port.
  sed -e "s/^smtp      inet/127.0.0.1:$port      inet/" /etc/postfix/master.cf > "$conf/master.cf"
  grep -q "^127.0.0.1:$port" "$conf/master.cf" || { echo "could not set the listen port" >&2; exit 1; }
  postfix -c "$conf" check
  postfix -c "$conf" start
  # Ready when the listener answers.
  for _ in $(seq 1 100); do
    if exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null; then exec 3>&-; exit 0; fi
    sleep 0.1
  done
  echo "postfix reference did not start on port $port" >&2; exit 1
  ;;
stop)
  postfix -c "$conf" stop >/dev/null 2>&1 || true
  ;;
*) echo "usage: $0 start|stop PORT DIR" >&2; exit 64 ;;
esac
