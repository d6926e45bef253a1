//! Listening sockets: adopt what the previous generation (or systemd) handed over, bind only
//! what was not inherited, close what the configuration no longer lists.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

use super::handover::InheritedSocket;
use super::state::ListenerInfo;

/// Deep enough that a burst of new connections during a handover waits in the queue rather
/// than being dropped (std's default of 128 overflows under a 64-connection close-per-request
/// load); the kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

/// A socket the configuration asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wanted {
    /// The name it crosses an upgrade with (`LISTEN_FDNAMES`).
    pub(crate) name: &'static str,
    pub(crate) addr: SocketAddr,
    /// The setting it comes from, for error messages.
    pub(crate) key: &'static str,
}

#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) info: ListenerInfo,
    pub(crate) listener: TcpListener,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "cannot listen on {addr} ({key}): the address is already in use; stop the process that \
         holds it (`ss -ltnp 'sport = :{port}'` shows it) or change {key}",
        port = addr.port()
    )]
    InUse { addr: SocketAddr, key: &'static str },
    #[error("cannot listen on {addr} ({key}): {source}; check {key}")]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the inherited socket for {key} ({addr}): {source}")]
    Adopt {
        addr: SocketAddr,
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Gives one listener per wanted socket, in the same order. An inherited socket is adopted by
/// name and address, else by address alone; under systemd socket activation the unit's
/// `FileDescriptorName=` wins even if the address differs (the unit is the source of truth).
/// Inherited sockets left over are closed: the configuration no longer lists them.
pub(crate) fn adopt_or_bind(
    mut inherited: Vec<InheritedSocket>,
    from_systemd: bool,
    wanted: &[Wanted],
) -> Result<Vec<Bound>, ListenError> {
    let mut bound = Vec::with_capacity(wanted.len());
    for want in wanted {
        let local = |s: &InheritedSocket| s.listener.local_addr().ok();
        let named = |s: &InheritedSocket| s.name.as_deref() == Some(want.name);
        let position = inherited
            .iter()
            .position(|s| named(s) && local(s).is_some_and(|a| same_address(want.addr, a)))
            .or_else(|| {
                inherited
                    .iter()
                    .position(|s| local(s).is_some_and(|a| same_address(want.addr, a)))
            })
            .or_else(|| {
                from_systemd
                    .then(|| inherited.iter().position(named))
                    .flatten()
            });
        let listener = match position {
            Some(index) => adopt(inherited.swap_remove(index), want)?,
            None => bind(want)?,
        };
        let addr = listener.local_addr().map_err(|source| ListenError::Bind {
            addr: want.addr,
            key: want.key,
            source,
        })?;
        tracing::info!(
            name = want.name,
            %addr,
            inherited = position.is_some(),
            "listening"
        );
        bound.push(Bound {
            info: ListenerInfo {
                name: want.name.to_owned(),
                addr,
                inherited: position.is_some(),
            },
            listener,
        });
    }
    for unused in inherited {
        tracing::info!(
            name = unused.name.as_deref().unwrap_or("unnamed"),
            addr = ?unused.listener.local_addr().ok(),
            "closing an inherited socket the configuration no longer lists"
        );
    }
    Ok(bound)
}

/// Port 0 in the configuration means "any port": it matches whatever the previous generation
/// bound, so a service started on an ephemeral port keeps it across upgrades.
fn same_address(wanted: SocketAddr, have: SocketAddr) -> bool {
    wanted.ip() == have.ip() && (wanted.port() == 0 || wanted.port() == have.port())
}

fn adopt(socket: InheritedSocket, want: &Wanted) -> Result<TcpListener, ListenError> {
    let err = |source| ListenError::Adopt {
        addr: want.addr,
        key: want.key,
        source,
    };
    // Inherited sockets arrive blocking; tokio requires non-blocking ones.
    socket.listener.set_nonblocking(true).map_err(err)?;
    TcpListener::from_std(socket.listener).map_err(err)
}

fn bind(want: &Wanted) -> Result<TcpListener, ListenError> {
    let err = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            ListenError::InUse {
                addr: want.addr,
                key: want.key,
            }
        } else {
            ListenError::Bind {
                addr: want.addr,
                key: want.key,
                source,
            }
        }
    };
    let socket = if want.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    // Lets a restart bind while old connections sit in TIME_WAIT; it does not let two
    // listeners share the address (that would be SO_REUSEPORT, which loses a closed socket's
    // queue and is never used here).
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(want.addr).map_err(err)?;
    socket.listen(BACKLOG).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn port_zero_matches_any_port_on_the_same_ip() {
        assert!(same_address(addr("127.0.0.1:0"), addr("127.0.0.1:4242")));
        assert!(same_address(addr("127.0.0.1:80"), addr("127.0.0.1:80")));
        assert!(!same_address(addr("127.0.0.1:80"), addr("127.0.0.1:81")));
        assert!(!same_address(addr("127.0.0.1:0"), addr("[::1]:4242")));
    }

    #[tokio::test]
    async fn inherited_socket_is_adopted_by_name_and_leftovers_are_closed() {
        let http = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let http_addr = http.local_addr().expect("addr");
        let other_addr = other.local_addr().expect("addr");
        let inherited = vec![
            InheritedSocket {
                name: Some("old".into()),
                listener: other,
            },
            InheritedSocket {
                name: Some("http".into()),
                listener: http,
            },
        ];
        let wanted = [Wanted {
            name: "http",
            addr: addr("127.0.0.1:0"),
            key: "server.listen",
        }];
        let bound = adopt_or_bind(inherited, false, &wanted).expect("adopt");
        assert_eq!(bound.len(), 1);
        assert_eq!(bound[0].info.addr, http_addr);
        assert!(bound[0].info.inherited);
        // The leftover was dropped: nothing listens there any more.
        assert!(std::net::TcpStream::connect(other_addr).is_err());
    }

    #[tokio::test]
    async fn a_taken_port_says_so_and_names_the_setting() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let wanted = [Wanted {
            name: "http",
            addr: taken.local_addr().expect("addr"),
            key: "server.listen",
        }];
        let err = adopt_or_bind(Vec::new(), false, &wanted).expect_err("port is taken");
        let message = err.to_string();
        assert!(message.contains("already in use"), "{message}");
        assert!(message.contains("server.listen"), "{message}");
    }
}
