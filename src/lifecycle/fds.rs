//! File descriptors: the soft limit raised to the hard one at start, and a reserve that public
//! connections never take, so that with the public listener flooded the admin listener still
//! answers and a reload or an upgrade still has the fds it needs.

use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};

/// Fds public connections never take: the process's own (runtime, listeners, signal pipe, log),
/// the admin listener's connections ([`ADMIN_CONNECTIONS`]), a reload (the config files), an
/// upgrade (the socket duplicates, the readiness pipe, the new process's start) and the run
/// files. Measured use outside the admin connections is under 40; the rest is margin.
pub(crate) const RESERVE: u64 = 256;

/// Connections the admin listener keeps open at once, inside [`RESERVE`]: enough for a few
/// scrapers and people, not enough for a flood to use the lifecycle's fds.
pub(crate) const ADMIN_CONNECTIONS: usize = 64;

/// Where the kernel caps a soft limit when the hard one is unlimited (`fs.nr_open`).
const NR_OPEN: &str = "/proc/sys/fs/nr_open";

/// The open-files limit, as found and as left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
    /// The soft limit before it was raised, when it was.
    pub raised_from: Option<u64>,
}

/// Raises the soft open-files limit to the hard one (as nginx's `worker_rlimit_nofile` or Go's
/// runtime do), and logs both. A process whose limit cannot be read or raised keeps what it
/// has, with a warning: only the number of connections it can take depends on it.
pub fn raise_fd_limit() -> Option<FdLimit> {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the open-files limit");
            return None;
        }
    };
    let target = if hard == RLIM_INFINITY {
        std::fs::read_to_string(NR_OPEN)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(soft)
    } else {
        hard
    };
    let limit = if target > soft {
        match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
            Ok(()) => FdLimit {
                soft: target,
                hard,
                raised_from: Some(soft),
            },
            Err(err) => {
                tracing::warn!(error = %err, soft, hard, "cannot raise the open-files limit");
                FdLimit {
                    soft,
                    hard,
                    raised_from: None,
                }
            }
        }
    } else {
        FdLimit {
            soft,
            hard,
            raised_from: None,
        }
    };
    tracing::info!(
        soft = limit.soft,
        hard = limit.hard,
        raised_from = limit.raised_from,
        reserve = RESERVE,
        public_connections = public_capacity_of(limit.soft),
        "open-files limit"
    );
    Some(limit)
}

/// How many public connections the fds allow: the soft limit in force, less the reserve.
pub(crate) fn public_capacity() -> usize {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => public_capacity_of(soft),
        // Unknowable: limits.max_connections alone decides.
        Err(_) => usize::MAX,
    }
}

fn public_capacity_of(soft: u64) -> usize {
    // At least one, so a tiny limit still serves, if poorly, rather than refusing everyone.
    let left = soft.saturating_sub(RESERVE).max(1);
    usize::try_from(left).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_comes_off_the_soft_limit() {
        assert_eq!(public_capacity_of(1024), 768);
        assert_eq!(public_capacity_of(100), 1);
    }
}
