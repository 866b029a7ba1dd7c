//! Where `-metrics` may listen: a loopback `IP:port` or a unix socket,
//! never an address other hosts can reach, since counts of mail and cover
//! are traffic information. Kept apart from the Operations flags because
//! this is a rule about addresses, with its own list of refused forms.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{ConfigError, bad};

/// Where the metrics endpoint listens: never on an address other hosts
/// can reach, since counts of mail and cover are traffic information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddr {
    /// An address in 127.0.0.0/8 or `[::1]`.
    Tcp(SocketAddr),
    /// A unix socket at this absolute path.
    Unix(PathBuf),
}

impl std::fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsAddr::Tcp(a) => write!(f, "{a}"),
            MetricsAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Reads `-metrics`: a loopback `IP:port` or an absolute unix socket path.
pub(super) fn metrics_addr(value: &str) -> Result<MetricsAddr, ConfigError> {
    if value.starts_with('/') {
        return Ok(MetricsAddr::Unix(PathBuf::from(value)));
    }
    let addr: SocketAddr = value.parse().map_err(|_| {
        bad(
            "-metrics",
            value,
            "is neither IP:port nor an absolute unix socket path; use e.g. 127.0.0.1:9900 or /run/pluto2/metrics.sock",
        )
    })?;
    if !addr.ip().is_loopback() {
        return Err(bad(
            "-metrics",
            value,
            "metrics are served on loopback only (127.0.0.0/8 or [::1]) or on a unix socket, never to the network; use e.g. 127.0.0.1:9900 and scrape it from this host",
        ));
    }
    Ok(MetricsAddr::Tcp(addr))
}

#[cfg(test)]
mod tests {
    use crate::config::sysexits;
    use crate::config::testing::validated;

    use super::*;

    #[test]
    fn it_takes_metrics_on_loopback_or_a_unix_socket_only() {
        assert_eq!(validated(&[]).unwrap().ops.metrics, None);
        for (value, want) in [
            (
                "127.0.0.1:9900",
                MetricsAddr::Tcp("127.0.0.1:9900".parse().unwrap()),
            ),
            (
                "127.3.2.1:0",
                MetricsAddr::Tcp("127.3.2.1:0".parse().unwrap()),
            ),
            (
                "[::1]:9900",
                MetricsAddr::Tcp("[::1]:9900".parse().unwrap()),
            ),
            (
                "/run/pluto2/m.sock",
                MetricsAddr::Unix("/run/pluto2/m.sock".into()),
            ),
        ] {
            let cfg = validated(&["-metrics", value]).unwrap();
            assert_eq!(cfg.ops.metrics, Some(want), "{value}");
        }
        for value in [
            "0.0.0.0:9900",
            "[::]:9900",
            "192.168.1.5:9900",
            "[::ffff:127.0.0.1]:9900",
            "localhost:9900",
            "metrics.sock",
            "9900",
        ] {
            let e = validated(&["-metrics", value]).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("-metrics "), "{value}: {text}");
            assert!(
                text.contains("127.0.0.1:9900"),
                "{value} names no fix: {text}"
            );
            assert_eq!(e.exit_status(), sysexits::USAGE);
        }
    }
}
