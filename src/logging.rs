//! Log setup. Lines carry a category tag (`[CONN]`, `[SMTP]`, `[SPOOL]`) in
//! the message; identifying data is only ever logged behind `-debug`, and
//! message content never.

use tracing::Level;

pub fn init(debug: bool) {
    let level = if debug { Level::DEBUG } else { Level::INFO };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}
