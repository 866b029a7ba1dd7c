//! Log setup. Lines carry a category tag (`[CONN]`, `[SMTP]`, `[SPOOL]`) in
//! the message; identifying data is only ever printed through
//! [`crate::redact::Sensitive`], which hides it unless `-debug`, and message
//! content never.
//!
//! Dependencies log at WARN and above only, even with `-debug`: their INFO
//! and DEBUG lines (resolver queries, TLS handshakes) can name hosts and
//! addresses, and we do not control what they print. pluto2's own lines
//! follow `-debug`.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter: our crate at INFO (DEBUG with `-debug`), everything else at WARN.
pub fn filter(debug: bool) -> Targets {
    let own = if debug {
        LevelFilter::DEBUG
    } else {
        LevelFilter::INFO
    };
    Targets::new()
        .with_default(LevelFilter::WARN)
        .with_target(env!("CARGO_CRATE_NAME"), own)
}

/// Installs the subscriber (stderr, no colours) and sets whether
/// identifying values are revealed. Call once, before any task starts.
pub fn init(debug: bool) {
    crate::redact::reveal(debug);
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(false)
                .with_writer(std::io::stderr),
        )
        .with(filter(debug))
        .try_init();
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn it_lets_dependencies_log_only_warnings() {
        for debug in [false, true] {
            let f = filter(debug);
            assert!(!f.would_enable("hickory_resolver::lookup", &Level::INFO));
            assert!(!f.would_enable("rustls::client", &Level::DEBUG));
            assert!(f.would_enable("hickory_resolver::lookup", &Level::WARN));
            assert!(f.would_enable("pluto2::smtp::server", &Level::INFO));
            assert_eq!(f.would_enable("pluto2::smtp::server", &Level::DEBUG), debug);
        }
    }
}
