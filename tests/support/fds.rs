//! A process's open file descriptors, and which of them are TCP sockets in which state: what
//! the leak checks compare and how a test learns which process holds a connection.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// What one file descriptor refers to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FdKind {
    TcpListen(SocketAddr),
    /// A TCP connection (any state but LISTEN).
    TcpConnection {
        local: SocketAddr,
        peer: SocketAddr,
    },
    /// A socket that is not TCP: Unix domain (the signal handler's socket pair), ...
    OtherSocket,
    Pipe,
    /// `anon_inode:[eventpoll]`, `anon_inode:[eventfd]`, ...
    AnonInode(String),
    File(PathBuf),
}

/// The open file descriptors of a process.
#[derive(Debug, Clone)]
pub struct Fds {
    pub pid: u32,
    pub entries: BTreeMap<i32, FdKind>,
}

impl Fds {
    /// Reads `/proc/<pid>/fd`; `None` if the process is gone.
    ///
    /// The fds are listed before the sockets are asked about, and a socket `ss` does not know
    /// is looked at again: one closed meanwhile is left out rather than taken for a non-TCP
    /// socket (under load, connections come and go between the two reads).
    pub fn of(pid: u32) -> Option<Fds> {
        let dir = format!("/proc/{pid}/fd");
        let mut targets = Vec::new();
        for entry in fs::read_dir(&dir).ok()? {
            let Ok(entry) = entry else { continue };
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            // Closed between the listing and the readlink: not open any more.
            if let Ok(target) = fs::read_link(entry.path()) {
                targets.push((fd, target.to_string_lossy().into_owned()));
            }
        }
        let tcp = tcp_table();
        let mut entries = BTreeMap::new();
        for (fd, target) in targets {
            let kind = if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
            {
                match tcp.get(&inode) {
                    Some(t) if t.listening => FdKind::TcpListen(t.local),
                    Some(t) => FdKind::TcpConnection {
                        local: t.local,
                        peer: t.peer,
                    },
                    None => {
                        let still = fs::read_link(format!("{dir}/{fd}"))
                            .is_ok_and(|now| now.to_string_lossy() == target);
                        if !still {
                            continue;
                        }
                        FdKind::OtherSocket
                    }
                }
            } else if target.starts_with("pipe:[") {
                FdKind::Pipe
            } else if let Some(name) = target.strip_prefix("anon_inode:") {
                FdKind::AnonInode(name.to_owned())
            } else {
                FdKind::File(PathBuf::from(target))
            };
            entries.insert(fd, kind);
        }
        Some(Fds { pid, entries })
    }

    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// What is open, by kind, without fd numbers or connections: two processes doing the same
    /// job idle have equal profiles.
    pub fn profile(&self) -> BTreeMap<String, usize> {
        let mut profile = BTreeMap::new();
        for kind in self.entries.values() {
            let label = match kind {
                FdKind::TcpListen(addr) => format!("tcp listening on {addr}"),
                FdKind::TcpConnection { .. } => continue,
                FdKind::OtherSocket => "socket (not TCP)".to_owned(),
                FdKind::Pipe => "pipe".to_owned(),
                FdKind::AnonInode(name) => format!("anon_inode {name}"),
                FdKind::File(path) => format!("file {}", path.display()),
            };
            *profile.entry(label).or_insert(0) += 1;
        }
        profile
    }

    pub fn listening(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = self
            .entries
            .values()
            .filter_map(|k| match k {
                FdKind::TcpListen(addr) => Some(*addr),
                _ => None,
            })
            .collect();
        addrs.sort_unstable();
        addrs
    }

    /// The peers of its TCP connections.
    pub fn connections(&self) -> Vec<SocketAddr> {
        self.entries
            .values()
            .filter_map(|k| match k {
                FdKind::TcpConnection { peer, .. } => Some(*peer),
                _ => None,
            })
            .collect()
    }

    pub fn pipes(&self) -> usize {
        self.entries
            .values()
            .filter(|k| matches!(k, FdKind::Pipe))
            .count()
    }
}

#[derive(Debug, Clone, Copy)]
struct TcpEntry {
    local: SocketAddr,
    peer: SocketAddr,
    listening: bool,
}

/// The TCP sockets of the machine's (network namespace's) processes, by inode, from `ss`
/// (iproute2). Not `/proc/net/tcp`: with a connection-per-request load running (in this test
/// or a parallel one) that file holds tens of thousands of TIME_WAIT lines, takes seconds to
/// read, and a read that races with them skips live sockets. `ss` asks the kernel over
/// sock_diag with the state filter applied there, which is fast and consistent.
fn tcp_table() -> HashMap<u64, TcpEntry> {
    let output = Command::new("ss")
        .args(["-H", "-t", "-n", "-a", "-e", "exclude", "time-wait"])
        .stdin(Stdio::null())
        .output()
        .expect("run `ss` (iproute2) to list TCP sockets");
    assert!(output.status.success(), "ss failed: {output:?}");
    let any = SocketAddr::from(([0, 0, 0, 0], 0));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = fields
                .iter()
                .find_map(|f| f.strip_prefix("ino:"))?
                .parse()
                .ok()?;
            (inode != 0).then_some(())?;
            Some((
                inode,
                TcpEntry {
                    local: fields.get(3)?.parse().ok()?,
                    // A listener's peer is `0.0.0.0:*`.
                    peer: fields.get(4)?.parse().unwrap_or(any),
                    listening: *fields.first()? == "LISTEN",
                },
            ))
        })
        .collect()
}

/// Whether process `pid` holds the server side of the connection from `client`.
pub fn holds_connection(pid: u32, client: SocketAddr) -> bool {
    Fds::of(pid).is_some_and(|fds| fds.connections().contains(&client))
}
