//! Whether a pid is a baton server of this deployment, checked by a client before it signals
//! anything. Matching the pid and start time of the state file proves the file is not stale,
//! but not that it tells the truth: the server's user can write any pid into it (and a client
//! often runs as root, through `sudo` or a systemd `ExecReload=`). So the process itself must
//! show that it is one:
//! 1. it runs as the user who owns the run files (a process of anyone else is refused, so the
//!    run files can never turn a root client against another user's process);
//! 2. its executable has the file name of this command's own (`baton`, or whatever the binary
//!    was renamed to): a `sleep` or a shell named in a forged file is refused;
//! 3. it holds one of the sockets the state file records: the listening socket itself, or, while
//!    it drains after closing its listeners, a connection accepted on one. That is what makes it
//!    the server of *this* deployment rather than some other process of the same binary. (In
//!    supervised mode the pid is the supervisor's, which holds the listening sockets.)
//!
//! Linux only: it reads `/proc/<pid>/{status,exe,fd,net/tcp,net/tcp6}`, which needs the
//! process to be the caller's or the caller to be root.

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// What `/proc/<pid>/exe` ends with once the file was replaced (an install by rename).
const DELETED: &str = " (deleted)";
/// `st` of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: u8 = 0x0A;

/// Why a pid is not a baton server of this deployment.
#[derive(Debug, thiserror::Error)]
pub enum NotOurs {
    #[error("it runs as uid {uid}, but the run files belong to uid {owner}")]
    OtherUser { uid: u32, owner: u32 },
    #[error(
        "it runs {}, not a `{}` binary like this command",
        exe.display(), expected.to_string_lossy()
    )]
    OtherProgram { exe: PathBuf, expected: OsString },
    #[error(
        "it holds none of the sockets the state file records ({listeners}), so it serves \
         something else, or has stopped listening and is about to exit"
    )]
    NoSocket { listeners: String },
    #[error("it holds no listening TCP socket, as a baton supervisor would")]
    NoListener,
    #[error("cannot find this command's own executable to compare with it: {0}")]
    OwnExe(#[source] std::io::Error),
    #[error(
        "cannot inspect it ({what}: {source}); run this command as the server's user \
         (uid {owner}) or as root"
    )]
    Hidden {
        what: String,
        owner: u32,
        #[source]
        source: std::io::Error,
    },
}

/// Checks that `pid` is a baton server of this deployment (see the module docs). `owner` owns
/// the run files; `listeners` are the addresses the state file records, `None` when there is no
/// state file (a supervisor between workers): then any listening socket will do.
pub(crate) fn verify(
    pid: u32,
    owner: u32,
    listeners: Option<&[SocketAddr]>,
) -> Result<(), NotOurs> {
    let hidden = |what: String| {
        move |source| NotOurs::Hidden {
            what,
            owner,
            source,
        }
    };

    let status_path = format!("/proc/{pid}/status");
    let (real, effective) = std::fs::read_to_string(&status_path)
        .and_then(|status| {
            real_and_effective_uid(&status).ok_or_else(|| std::io::Error::other("no Uid line"))
        })
        .map_err(hidden(status_path))?;
    if let Some(uid) = [real, effective].into_iter().find(|&uid| uid != owner) {
        return Err(NotOurs::OtherUser { uid, owner });
    }

    let expected = binary_name(&std::env::current_exe().map_err(NotOurs::OwnExe)?);
    let exe_path = format!("/proc/{pid}/exe");
    let exe = std::fs::read_link(&exe_path).map_err(hidden(exe_path))?;
    if binary_name(&exe) != expected {
        return Err(NotOurs::OtherProgram {
            exe,
            expected: expected.unwrap_or_default(),
        });
    }

    let fd_dir = format!("/proc/{pid}/fd");
    let held = socket_inodes(&fd_dir).map_err(hidden(fd_dir))?;
    let net = format!("/proc/{pid}/net");
    // Whether it holds a socket of `families` (IPv4, IPv6) in `scope` that `wanted` accepts.
    let holds = |families: [bool; 2], scope, wanted: &dyn Fn(&TcpSocket) -> bool| {
        for (file, _) in ["tcp", "tcp6"]
            .into_iter()
            .zip(families)
            .filter(|(_, f)| *f)
        {
            let sockets = tcp_sockets(&format!("{net}/{file}"), scope)?;
            if sockets
                .iter()
                .any(|socket| held.contains(&socket.inode) && wanted(socket))
            {
                return Ok(true);
            }
        }
        Ok(false)
    };
    let Some(listeners) = listeners else {
        return match holds([true, true], Scope::Listening, &|_| true) {
            Ok(true) => Ok(()),
            Ok(false) => Err(NotOurs::NoListener),
            Err(source) => Err(hidden(net.clone())(source)),
        };
    };
    // Only the tables of the families recorded: a table without a socket of its own family is
    // read to its end, every other socket included.
    let families = [
        listeners.iter().any(SocketAddr::is_ipv4),
        listeners.iter().any(SocketAddr::is_ipv6),
    ];
    let serves = |socket: &TcpSocket| listeners.iter().any(|&l| socket.serves(l));
    // The listeners first, which is fast; the connections only for a server that has none
    // (it drains), since under load the whole table takes long to read.
    match holds(families, Scope::Listening, &serves).and_then(|found| match found {
        true => Ok(true),
        false => holds(families, Scope::All, &serves),
    }) {
        Ok(true) => Ok(()),
        Ok(false) => Err(NotOurs::NoSocket {
            listeners: listeners
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }),
        Err(source) => Err(hidden(net.clone())(source)),
    }
}

/// The real and effective uid from `/proc/<pid>/status` (`Uid: real effective saved fs`).
fn real_and_effective_uid(status: &str) -> Option<(u32, u32)> {
    let mut ids = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .map(str::parse);
    Some((ids.next()?.ok()?, ids.next()?.ok()?))
}

/// An executable's file name, without the ` (deleted)` the kernel appends once the file was
/// replaced: after `scripts/restart.sh` installs a new build by rename, the running server's
/// `/proc/<pid>/exe` reads `/srv/app/bin/baton (deleted)`.
fn binary_name(exe: &Path) -> Option<OsString> {
    let name = exe.file_name()?.to_string_lossy();
    Some(OsString::from(name.strip_suffix(DELETED).unwrap_or(&name)))
}

/// The inodes of the sockets among a process's open files (`socket:[12345]` links).
fn socket_inodes(fd_dir: &str) -> std::io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(fd_dir)? {
        // An fd closed while we list them is simply not there.
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    Ok(inodes)
}

/// One line of `/proc/net/tcp` or `tcp6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TcpSocket {
    local: SocketAddr,
    state: u8,
    inode: u64,
}

impl TcpSocket {
    /// Whether this socket is the listener on `addr`, or a connection accepted on it (its local
    /// address is the one the client reached, any address when the listener is 0.0.0.0 or ::).
    fn serves(&self, addr: SocketAddr) -> bool {
        if self.state == TCP_LISTEN {
            return self.local == addr;
        }
        self.local.port() == addr.port()
            && (addr.ip().is_unspecified() || self.local.ip() == addr.ip())
    }
}

/// Which part of a TCP table to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The listening sockets, which the kernel lists first: reading stops after them. (The rest
    /// can be tens of thousands of TIME_WAIT lines under load, which take seconds to produce.)
    Listening,
    All,
}

/// The sockets in `table` (`/proc/<pid>/net/tcp` or `tcp6`: those of the network namespace the
/// process lives in, a container's say). A missing table (no IPv6 here) holds none.
fn tcp_sockets(table: &str, scope: Scope) -> std::io::Result<Vec<TcpSocket>> {
    use std::io::BufRead;
    let table = match std::fs::File::open(table) {
        Ok(table) => std::io::BufReader::new(table),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut sockets = Vec::new();
    for line in table.lines().skip(1) {
        let Some(socket) = parse_tcp_line(&line?) else {
            continue;
        };
        if scope == Scope::Listening && socket.state != TCP_LISTEN {
            break;
        }
        sockets.push(socket);
    }
    Ok(sockets)
}

/// `  0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 12345 …`:
/// local address, remote address, state, queues, timers, retransmits, uid, timeout, inode.
fn parse_tcp_line(line: &str) -> Option<TcpSocket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (ip, port) = fields.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(TcpSocket {
        local: SocketAddr::new(parse_ip(ip)?, port),
        state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
        inode: fields.get(9)?.parse().ok()?,
    })
}

/// The kernel prints an address as 32-bit words, each in the machine's byte order.
fn parse_ip(hex: &str) -> Option<IpAddr> {
    let words = (0..hex.len() / 8)
        .map(|i| {
            let word = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
            Some(word.to_ne_bytes())
        })
        .collect::<Option<Vec<[u8; 4]>>>()?;
    match words.as_slice() {
        [a] => Some(IpAddr::V4(Ipv4Addr::from(*a))),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (chunk, word) in bytes.chunks_exact_mut(4).zip([a, b, c, d]) {
                chunk.copy_from_slice(word);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn own_uid() -> u32 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").expect("/proc/self").uid()
    }

    #[test]
    fn addresses_parse_as_the_kernel_prints_them() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  \
                  1000        0 424242 1 0000000000000000 100 0 0 10 0";
        let socket = parse_tcp_line(v4).expect("a line");
        if cfg!(target_endian = "little") {
            assert_eq!(socket.local, "127.0.0.1:8080".parse().expect("addr"));
        }
        assert_eq!((socket.state, socket.inode), (TCP_LISTEN, 424242));
        let v6 = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 \
                  0A 00000000:00000000 00:00000000 00000000  1000 0 7 1";
        let socket = parse_tcp_line(v6).expect("a line");
        if cfg!(target_endian = "little") {
            assert_eq!(socket.local, "[::1]:8080".parse().expect("addr"));
        }
        assert_eq!(parse_ip("0100007"), None);
    }

    #[test]
    fn a_deleted_binary_keeps_its_name() {
        assert_eq!(
            binary_name(Path::new("/srv/app/bin/baton (deleted)")),
            Some("baton".into())
        );
        assert_eq!(
            binary_name(Path::new("/usr/bin/sleep")),
            Some("sleep".into())
        );
    }

    #[test]
    fn the_test_process_is_ours_only_with_its_listener() {
        // The test binary is its own "baton": same user, same executable.
        let me = std::process::id();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        verify(me, own_uid(), Some(&[addr])).expect("holds its listener");
        verify(me, own_uid(), None).expect("holds a listener");

        let other = TcpListener::bind("127.0.0.1:0").expect("bind");
        let gone = other.local_addr().expect("addr");
        drop(other);
        let err = verify(me, own_uid(), Some(&[gone])).expect_err("not that socket");
        assert!(
            err.to_string().contains(&format!(
                "holds none of the sockets the state file records ({gone})"
            )),
            "{err}"
        );

        let err = verify(me, own_uid() + 1, Some(&[addr])).expect_err("another user");
        assert!(
            err.to_string().contains(&format!(
                "runs as uid {}, but the run files belong to uid {}",
                own_uid(),
                own_uid() + 1
            )),
            "{err}"
        );
    }
}
