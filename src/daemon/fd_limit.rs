//! The file-descriptor limit: raised at start, and checked against
//! `-max-connections`.
//!
//! Every session holds a socket, so a daemon started with the common soft
//! limit of 1024 descriptors and the default `-max-connections 1024` runs
//! out before its connection table is full, and `accept` starts failing.
//! The soft limit may be raised up to the hard one without privileges, so
//! we do that first, then say so when `-max-connections` still cannot fit.
//!
//! `rustix` gives a safe `getrlimit`/`setrlimit` (the crate forbids
//! `unsafe`); it was already in the dependency tree through `tempfile`.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors the daemon needs besides its SMTP sessions: the spool
/// (database, WAL, shared memory), the listener, epoll and its wakers,
/// signal pipes, standard streams, the cover key, with room to spare.
pub const BASE_DESCRIPTORS: u64 = 64;

/// Descriptors per relay worker: the SOCKS connection of a delivery and
/// the one of its MX lookup.
pub const PER_WORKER: u64 = 2;

/// Where the hard limit is "unlimited", the kernel's default `nr_open`.
const UNLIMITED_TARGET: u64 = 1 << 20;

/// The soft limit before and after [`raise`], and the hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub before: u64,
    pub soft: u64,
    pub hard: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. A failure leaves the
/// limit as it was (the daemon still runs; the check below warns).
pub fn raise() -> Limits {
    let current = getrlimit(Resource::Nofile);
    let before = current.current.unwrap_or(u64::MAX);
    let target = current.maximum.unwrap_or(UNLIMITED_TARGET);
    if before >= target {
        return Limits {
            before,
            soft: before,
            hard: current.maximum,
        };
    }
    let wanted = Rlimit {
        current: Some(target),
        maximum: current.maximum,
    };
    let soft = match setrlimit(Resource::Nofile, wanted) {
        Ok(()) => target,
        Err(_) => before,
    };
    Limits {
        before,
        soft,
        hard: current.maximum,
    }
}

/// Descriptors the daemon needs with these settings.
pub fn needed(max_connections: usize, workers: usize) -> u64 {
    BASE_DESCRIPTORS + max_connections as u64 + PER_WORKER * workers as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_counts_sessions_workers_and_the_daemon_itself() {
        assert_eq!(needed(1024, 5), 64 + 1024 + 10);
    }

    #[test]
    fn it_never_lowers_the_soft_limit() {
        let limits = raise();
        assert!(limits.soft >= limits.before);
        assert!(limits.hard.is_none_or(|hard| limits.soft <= hard));
        // A second call finds the limit already raised.
        assert_eq!(raise().before, limits.soft);
    }
}
