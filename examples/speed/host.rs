//! The host, as the many-connections mode needs it: the open-files limit raised for this process
//! (and so for the servers it starts), the kernel's listen-queue counters, which tell whether a
//! reconnect storm overflowed an accept queue, and CPU time (the client's, a server's, the whole
//! machine's), which tells who was busy during a measurement on a shared machine.

use std::time::Duration;

use nix::sys::resource::{RLIM_INFINITY, Resource, UsageWho, getrlimit, getrusage, setrlimit};

use crate::SpeedError;

/// Where the kernel caps a soft limit when the hard one is unlimited.
const NR_OPEN: &str = "/proc/sys/fs/nr_open";

/// The open-files limit of this process, after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct FdLimit {
    pub(crate) soft: u64,
    pub(crate) hard: u64,
    /// The soft limit before, when it was raised.
    pub(crate) raised_from: Option<u64>,
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (or `fs.nr_open` when the hard
/// one is unlimited). Children inherit it: wrk, nginx, bare axum, baton (which raises its own
/// the same way, and caps its connections at it less a reserve).
pub(crate) fn raise_fd_limit() -> Result<FdLimit, SpeedError> {
    let failed = |what: &str, err: nix::Error| SpeedError::Failed(format!("{what}: {err}"));
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|err| failed("getrlimit(NOFILE)", err))?;
    let target = if hard == RLIM_INFINITY {
        std::fs::read_to_string(NR_OPEN)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(soft)
    } else {
        hard
    };
    if target <= soft {
        return Ok(FdLimit {
            soft,
            hard,
            raised_from: None,
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, target, hard)
        .map_err(|err| failed("setrlimit(NOFILE)", err))?;
    Ok(FdLimit {
        soft: target,
        hard,
        raised_from: Some(soft),
    })
}

/// `TcpExt` counters of this network namespace (`/proc/net/netstat`): a SYN or a handshake's
/// last ACK dropped because a listener's accept queue was full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ListenCounters {
    /// `ListenOverflows`: the accept queue was full.
    pub(crate) overflows: u64,
    /// `ListenDrops`: every drop at a listener, overflows included.
    pub(crate) drops: u64,
}

impl ListenCounters {
    /// The counters now; `None` where `/proc/net/netstat` cannot be read.
    pub(crate) fn read() -> Option<Self> {
        parse_netstat(&std::fs::read_to_string("/proc/net/netstat").ok()?)
    }

    /// What happened since `before`.
    pub(crate) fn since(self, before: Self) -> Self {
        Self {
            overflows: self.overflows.saturating_sub(before.overflows),
            drops: self.drops.saturating_sub(before.drops),
        }
    }
}

/// The `TcpExt:` header line names the columns of the `TcpExt:` line after it.
fn parse_netstat(text: &str) -> Option<ListenCounters> {
    let mut lines = text.lines().filter(|line| line.starts_with("TcpExt:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let value = |name: &str| -> Option<u64> {
        let at = names.iter().position(|n| *n == name)?;
        values.get(at)?.parse().ok()
    };
    Some(ListenCounters {
        overflows: value("ListenOverflows")?,
        drops: value("ListenDrops")?,
    })
}

/// `/proc` counts CPU time in USER_HZ, 100 per second in the Linux ABI on every common
/// architecture (what `sysconf(_SC_CLK_TCK)` says).
fn ticks(count: u64) -> Duration {
    Duration::from_millis(count.saturating_mul(10))
}

/// User plus system CPU time of this process so far (all its threads).
pub(crate) fn own_cpu() -> Duration {
    getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |usage| {
        let time = |t: nix::sys::time::TimeVal| {
            Duration::new(
                u64::try_from(t.tv_sec()).unwrap_or(0),
                u32::try_from(t.tv_usec()).unwrap_or(0) * 1000,
            )
        };
        time(usage.user_time()) + time(usage.system_time())
    })
}

/// User plus system CPU time of process `pid` (children not included).
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime); fields[0] is field 3.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(ticks(field(14)? + field(15)?))
}

/// User plus system CPU time of process `pid` and of its live children (nginx's workers).
pub(crate) fn process_tree_cpu(pid: u32) -> Option<Duration> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let children = children
        .split_whitespace()
        .filter_map(|child| child.parse().ok())
        .filter_map(process_cpu);
    Some(process_cpu(pid)? + children.sum::<Duration>())
}

/// CPU time the whole machine was busy so far, over all cores (`/proc/stat`): all but idle and
/// iowait (user, nice, system, irq, softirq, steal).
pub(crate) fn machine_busy() -> Option<Duration> {
    parse_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_stat(text: &str) -> Option<Duration> {
    let line = text.lines().find(|line| line.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal
    let busy = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t.parse::<u64>().unwrap_or(0))
        .fold(0, u64::saturating_add);
    Some(ticks(busy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstat_counters_are_read_by_name() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TW\n\
                    TcpExt: 1 22 33 4\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        let counters = parse_netstat(text).expect("parsed");
        assert_eq!(
            counters,
            ListenCounters {
                overflows: 22,
                drops: 33
            }
        );
        let later = ListenCounters {
            overflows: 30,
            drops: 40,
        };
        assert_eq!(later.since(counters).overflows, 8);
        assert!(parse_netstat("IpExt: a\nIpExt: 1\n").is_none());
    }

    #[test]
    fn machine_cpu_is_read_in_ticks() {
        let text = "cpu  100 1 50 1000 7 3 20 9 0 0\ncpu0 50 0 25 500 3 1 10 4 0 0\n";
        // Busy: 100 + 1 + 50 + 3 + 20 + 9 ticks of 10 ms.
        assert_eq!(parse_stat(text), Some(Duration::from_millis(1830)));
    }
}
