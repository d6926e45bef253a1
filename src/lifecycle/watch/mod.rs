//! Watching one connection for the time bounds hyper does not keep: a first request or an
//! HTTP/2 handshake that never comes, a request head that never ends, a keep-alive connection
//! left idle (both protocols), and a response that stops moving (a client that does not read,
//! a stalled HTTP/2 window, a silent stream).
//!
//! The cost is kept off the request path: the socket and the service bump a few relaxed atomic
//! counters ([`Activity`]), and one timer per connection wakes the [`Watchdog`] a few times per
//! bound to compare them with what it saw last time. No timer is set per request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

mod watchdog;

pub(crate) use watchdog::{Verdict, Watchdog};

/// The HTTP/2 connection preface, which the protocol sniff reads before hyper does.
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection did, as its socket and its service count it.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Bytes read from the socket after the sniffed prefix.
    read: AtomicU64,
    /// Writes the socket took.
    written: AtomicU64,
    /// A write is waiting for room in the socket.
    write_waiting: AtomicBool,
    /// Requests handed to the service.
    started: AtomicU64,
    /// Handlers running.
    handling: AtomicUsize,
    /// Responses not sent in full: handler running, or body still going out.
    open: AtomicUsize,
    /// Data frames taken from response bodies: a response moving.
    frames: AtomicU64,
    /// `read` when the last open response ended: bytes beyond it begin the next request head.
    read_at_rest: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) read: u64,
    pub(crate) written: u64,
    pub(crate) write_waiting: bool,
    pub(crate) started: u64,
    pub(crate) handling: usize,
    pub(crate) open: usize,
    pub(crate) frames: u64,
    pub(crate) read_at_rest: u64,
}

impl Activity {
    pub(crate) fn seen(&self) -> Seen {
        Seen {
            read: self.read.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            write_waiting: self.write_waiting.load(Ordering::Relaxed),
            started: self.started.load(Ordering::Relaxed),
            handling: self.handling.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
            frames: self.frames.load(Ordering::Relaxed),
            read_at_rest: self.read_at_rest.load(Ordering::Relaxed),
        }
    }

    /// A request reached the service: returns its guard and its number on the connection.
    pub(crate) fn begin(self: &Arc<Self>) -> (InFlight, u64) {
        let number = self.started.fetch_add(1, Ordering::Relaxed) + 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        self.handling.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight {
            activity: self.clone(),
            handling: true,
        };
        (guard, number)
    }
}

/// One request from the service call until its response body is sent in full (or dropped).
#[derive(Debug)]
pub(crate) struct InFlight {
    activity: Arc<Activity>,
    handling: bool,
}

impl InFlight {
    /// The handler returned; what is left is sending the body.
    pub(crate) fn handled(&mut self) {
        if std::mem::take(&mut self.handling) {
            self.activity.handling.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.handled();
        let activity = &self.activity;
        if activity.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            let read = activity.read.load(Ordering::Relaxed);
            activity.read_at_rest.store(read, Ordering::Relaxed);
        }
    }
}

/// A response body that counts its data frames and ends its request's [`InFlight`] when it is
/// done. Generic code around axum's boxed `Body`, so it adds no allocation.
#[derive(Debug)]
pub(crate) struct Tracked {
    body: Body,
    in_flight: InFlight,
}

impl Tracked {
    pub(crate) fn new(body: Body, mut in_flight: InFlight) -> Tracked {
        in_flight.handled();
        Tracked { body, in_flight }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_data()
        {
            let activity = &self.in_flight.activity;
            activity.frames.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's socket, as hyper sees it: first the bytes the protocol sniff read, then
/// the socket, counting reads and writes into [`Activity`].
#[derive(Debug)]
pub(crate) struct Watched {
    stream: TcpStream,
    prefix: [u8; H2_PREFACE.len()],
    prefix_at: usize,
    prefix_len: usize,
    activity: Arc<Activity>,
    // Mirrors of the shared counters: only this side writes them, so a plain store publishes.
    read: u64,
    written: u64,
    write_waiting: bool,
}

impl Watched {
    pub(crate) fn new(stream: TcpStream, activity: Arc<Activity>) -> Watched {
        Watched {
            stream,
            prefix: [0; H2_PREFACE.len()],
            prefix_at: 0,
            prefix_len: 0,
            activity,
            read: 0,
            written: 0,
            write_waiting: false,
        }
    }

    /// Reads the connection's first bytes, up to the length of the HTTP/2 preface, and keeps
    /// them to hand to hyper. `Ok(true)`: they are the HTTP/2 preface; `Ok(false)`: they are
    /// not (HTTP/1). Waits for readability, so a client sending its preface a byte at a time
    /// costs no more than any other; the caller bounds the wait.
    pub(crate) async fn sniff(&mut self) -> io::Result<bool> {
        use tokio::io::AsyncReadExt as _;
        loop {
            let n = self
                .stream
                .read(&mut self.prefix[self.prefix_len..])
                .await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.prefix_len += n;
            let got = &self.prefix[..self.prefix_len];
            if !H2_PREFACE.starts_with(got) {
                return Ok(false);
            }
            if got.len() == H2_PREFACE.len() {
                return Ok(true);
            }
        }
    }

    fn wrote(&mut self) {
        self.written += 1;
        self.activity.written.store(self.written, Ordering::Relaxed);
        if self.write_waiting {
            self.write_waiting = false;
            self.activity.write_waiting.store(false, Ordering::Relaxed);
        }
    }

    fn waits_to_write(&mut self) {
        if !self.write_waiting {
            self.write_waiting = true;
            self.activity.write_waiting.store(true, Ordering::Relaxed);
        }
    }

    fn after_write(&mut self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(_)) => self.wrote(),
            Poll::Pending => self.waits_to_write(),
            Poll::Ready(Err(_)) => {}
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix_at < this.prefix_len {
            let rest = &this.prefix[this.prefix_at..this.prefix_len];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.prefix_at += n;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read += n as u64;
            this.activity.read.store(this.read, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.after_write(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.after_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
