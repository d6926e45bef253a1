//! HTTP as the tests speak it: a raw HTTP/1.1 client for what must happen on a connection
//! opened earlier (keep-alive, requests held in flight across a drain), and the parsing of
//! what the server answers (`GET /`, `/metrics`). One-shot requests go through loadgen.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::REQUEST_TIMEOUT;

/// The value of one sample line of a Prometheus text exposition.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

/// `GET /`: `<greeting> (version <v>, pid <pid>, generation <g>)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub greeting: String,
    pub version: String,
    pub pid: u32,
    pub generation: u64,
}

impl Hello {
    pub fn parse(body: &str) -> Hello {
        let parse = || -> Option<Hello> {
            let body = body.strip_suffix('\n')?;
            let (greeting, rest) = body.rsplit_once(" (version ")?;
            let rest = rest.strip_suffix(')')?;
            let mut parts = rest.split(", ");
            let version = parts.next()?.to_owned();
            let pid = parts.next()?.strip_prefix("pid ")?.parse().ok()?;
            let generation = parts.next()?.strip_prefix("generation ")?.parse().ok()?;
            Some(Hello {
                greeting: greeting.to_owned(),
                version,
                pid,
                generation,
            })
        };
        parse().unwrap_or_else(|| panic!("GET / body not in the documented format: {body:?}"))
    }
}

/// One HTTP/1.1 connection that stays open between requests (loadgen's one-shot helpers close
/// theirs), for what must happen on a connection opened earlier.
#[derive(Debug)]
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A response read from a [`RawConn`]: the same as loadgen's (status, lowercase headers, body,
/// `header()`, `closes()`).
pub use loadgen::Response as RawResponse;

impl RawConn {
    pub fn open(addr: SocketAddr) -> io::Result<RawConn> {
        let stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(RawConn {
            stream,
            buf: Vec::new(),
        })
    }

    /// The client side's address: the peer address the server sees.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("a connected socket")
    }

    /// Writes `GET path` (keep-alive), in one write as a real client does (`write!` on the
    /// stream would send a segment per piece of the format).
    pub fn send(&mut self, path: &str) -> io::Result<()> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: baton.test\r\nAccept: */*\r\n\r\n");
        self.stream.write_all(request.as_bytes())
    }

    /// Reads one response (framed by `Content-Length`).
    pub fn read_response(&mut self) -> io::Result<RawResponse> {
        let head_end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no Content-Length in {head:?}")))?;
        while self.buf.len() < head_end + length {
            self.fill()?;
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + length]).into_owned();
        self.buf.drain(..head_end + length);
        Ok(RawResponse {
            status,
            headers,
            body,
            tls: None,
        })
    }

    pub fn get(&mut self, path: &str) -> io::Result<RawResponse> {
        self.send(path)?;
        self.read_response()
    }

    /// Whether the server closed the connection (reads end of file).
    pub fn closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// A request sent and waiting for its response on a thread, e.g. `/api/slow?ms=2000` held
/// across an upgrade or a shutdown.
#[derive(Debug)]
pub struct InFlight {
    /// The client's address, to find which process holds the connection.
    pub client: SocketAddr,
    pub sent_at: Instant,
    handle: JoinHandle<io::Result<RawResponse>>,
}

impl InFlight {
    pub fn start(addr: SocketAddr, path: &str) -> InFlight {
        let mut conn = RawConn::open(addr).expect("connect for the in-flight request");
        conn.send(path).expect("send the in-flight request");
        let client = conn.local_addr();
        InFlight {
            client,
            sent_at: Instant::now(),
            handle: std::thread::spawn(move || conn.read_response()),
        }
    }

    /// The response (or how it failed) and how long after sending it arrived.
    pub fn finish(self) -> (io::Result<RawResponse>, Duration) {
        let result = self.handle.join().expect("the in-flight request's thread");
        (result, self.sent_at.elapsed())
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}
