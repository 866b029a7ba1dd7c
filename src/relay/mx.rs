//! Placeholder while being written (not yet wired in).
