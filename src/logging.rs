//! Logging setup: one subscriber writing to stderr (journald adds the
//! time), with dependencies held to warnings so that no library can log an
//! address or a host name however verbose they print. pluto2's own lines
//! follow `-log-level` (`-debug` means debug and reveals addresses).
//!
//! The filter sits behind tracing-subscriber's reload layer, so a SIGHUP
//! can change the level of a running daemon ([`apply`]).

use std::sync::OnceLock;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::Registry;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

/// The handle that swaps the filter; set once by [`init`].
static FILTER: OnceLock<reload::Handle<Targets, Registry>> = OnceLock::new();

/// The filter: our crate at `own`, everything else at WARN (or ERROR when
/// `own` is quieter still).
pub fn filter(own: LevelFilter) -> Targets {
    Targets::new()
        .with_default(own.min(LevelFilter::WARN))
        .with_target(env!("CARGO_CRATE_NAME"), own)
}

fn own_level(debug: bool) -> LevelFilter {
    if debug {
        LevelFilter::DEBUG
    } else {
        LevelFilter::INFO
    }
}

/// Installs the subscriber (stderr, no colours) and sets whether
/// identifying values are revealed. Call once, before any task starts.
pub fn init(debug: bool) {
    crate::redact::reveal(debug);
    let (layer, handle) = reload::Layer::new(filter(own_level(debug)));
    let installed = tracing_subscriber::registry()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(false)
                .with_writer(std::io::stderr),
        )
        .try_init();
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Puts a level and the redaction switch in force, at start (after
/// [`init`]) and on reload. Turning `reveal` on or off at run time is safe:
/// [`crate::redact::Sensitive`] reads the switch each time it is formatted,
/// so lines logged after the change follow it and earlier lines stay as
/// they were written. Without an installed subscriber only the switch
/// changes.
pub fn apply(own: LevelFilter, reveal: bool) -> Result<(), String> {
    crate::redact::reveal(reveal);
    match FILTER.get() {
        Some(handle) => handle.reload(filter(own)).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn it_lets_dependencies_log_only_warnings() {
        for debug in [false, true] {
            let f = filter(own_level(debug));
            assert!(!f.would_enable("hickory_resolver::lookup", &Level::INFO));
            assert!(!f.would_enable("rustls::client", &Level::DEBUG));
            assert!(f.would_enable("hickory_resolver::lookup", &Level::WARN));
            assert!(f.would_enable("pluto2::smtp::server", &Level::INFO));
            assert_eq!(f.would_enable("pluto2::smtp::server", &Level::DEBUG), debug);
        }
    }

    #[test]
    fn it_quiets_everything_below_the_chosen_level() {
        let f = filter(LevelFilter::WARN);
        assert!(!f.would_enable("pluto2::smtp::server", &Level::INFO));
        assert!(f.would_enable("pluto2::smtp::server", &Level::WARN));
        let f = filter(LevelFilter::ERROR);
        assert!(!f.would_enable("hickory_resolver::lookup", &Level::WARN));
        assert!(f.would_enable("pluto2::daemon", &Level::ERROR));
    }
}
