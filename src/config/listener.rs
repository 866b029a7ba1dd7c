//! The Listener group: where the SMTP side listens and what one client may
//! do (message size, recipients, sessions, rate limit, timeouts, DATA rate
//! and memory). The counts are read signed so that a negative value is
//! refused here with its lower bound rather than by clap as an unknown flag.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::Args;

use super::{ConfigError, at_least_a_second, bad, parse_duration};

/// The inbound SMTP side: where it listens and what one client may do.
#[derive(Debug, Args)]
#[command(next_help_heading = "Listener")]
pub struct ListenerArgs {
    /// SMTP listen address (-smtp is another name for it, as in fog).
    #[arg(
        long,
        visible_alias = "smtp",
        default_value = "127.0.0.1:2525",
        value_name = "IP:PORT"
    )]
    pub addr: SocketAddr,
    // The counts below are signed and take negative numbers as values, so
    // that `-max-message-size -5` reaches `validate` and is refused with its
    // lower bound, instead of clap reading `-5` as an unknown flag.
    /// Largest message accepted, in bytes (advertised in SIZE).
    #[arg(
        long,
        default_value_t = 10_485_760,
        value_name = "BYTES",
        allow_negative_numbers = true
    )]
    pub max_message_size: i64,
    /// Recipients per message.
    #[arg(
        long,
        default_value_t = 50,
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub max_recipients: i64,
    /// Concurrent SMTP sessions; when full, the slowest session is shed (421) for a newcomer.
    #[arg(
        long,
        default_value_t = 1024,
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub max_connections: i64,
    /// Sessions allowed per client identity in each -rate-window.
    #[arg(
        long,
        default_value_t = 10,
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub rate_limit: i64,
    /// Window for -rate-limit, e.g. 1m.
    #[arg(long, default_value = "1m", value_parser = parse_duration, value_name = "DURATION")]
    pub rate_window: Duration,
    /// Close a session that sends nothing for this long (RFC 5321 4.5.3.2 suggests 5m).
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,
    /// Close any session this long after it connected, busy or not.
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    pub session_timeout: Duration,
    /// Slowest average DATA rate, in bytes per second, after a grace of -idle-timeout (at most 30s) (0 = off).
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub min_data_rate: u64,
    /// Memory for message bodies shared by all sessions, beyond 64 KiB each; when spent, 452 4.3.1.
    #[arg(long, default_value_t = 134_217_728, value_name = "BYTES")]
    pub data_memory: usize,
    /// Expect a PROXY v1 header (Tor's HiddenServiceExportCircuitID haproxy).
    #[arg(long)]
    pub proxy_protocol: bool,
}

/// Settings of the SMTP listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub rate_limit: NonZeroU32,
    pub rate_window: Duration,
    pub idle_timeout: Duration,
    pub session_timeout: Duration,
    /// Bytes per second; zero turns the minimum off.
    pub min_data_rate: u64,
    pub data_memory: usize,
    pub proxy_protocol: bool,
}

impl ListenerArgs {
    pub(super) fn validate(self) -> Result<ListenerConfig, ConfigError> {
        let max_message_size = count("-max-message-size", self.max_message_size, 1024, " bytes")?;
        let max_recipients = count("-max-recipients", self.max_recipients, 1, "")?;
        let max_connections = count("-max-connections", self.max_connections, 1, "")?;
        let rate_limit: u32 = count("-rate-limit", self.rate_limit, 1, " session per window")?;
        let rate_limit = NonZeroU32::new(rate_limit).expect("checked to be at least 1");
        if self.rate_window.is_zero() {
            return Err(bad(
                "-rate-window",
                "0",
                "must be longer than zero, e.g. 1m",
            ));
        }
        at_least_a_second("-idle-timeout", self.idle_timeout)?;
        at_least_a_second("-session-timeout", self.session_timeout)?;
        Ok(ListenerConfig {
            addr: self.addr,
            max_message_size,
            max_recipients,
            max_connections,
            rate_limit,
            rate_window: self.rate_window,
            idle_timeout: self.idle_timeout,
            session_timeout: self.session_timeout,
            min_data_rate: self.min_data_rate,
            data_memory: self.data_memory,
            proxy_protocol: self.proxy_protocol,
        })
    }
}

/// A count flag's value as the type its setting uses, refused in one line
/// naming the lower bound when it is below `min` (negative values included)
/// and when it does not fit the type.
fn count<T: TryFrom<i64>>(
    flag: &'static str,
    value: i64,
    min: i64,
    unit: &str,
) -> Result<T, ConfigError> {
    if value < min {
        return Err(bad(
            flag,
            &value.to_string(),
            &format!("must be at least {min}{unit}"),
        ));
    }
    T::try_from(value).map_err(|_| bad(flag, &value.to_string(), "is too large"))
}

#[cfg(test)]
mod tests {
    use crate::config::testing::validated;

    #[test]
    fn it_takes_smtp_as_another_name_for_addr() {
        for form in [&["-smtp", "127.0.0.1:2626"][..], &["-smtp=127.0.0.1:2626"]] {
            let cfg = validated(form).unwrap();
            assert_eq!(cfg.listener.addr, "127.0.0.1:2626".parse().unwrap());
        }
    }
}
