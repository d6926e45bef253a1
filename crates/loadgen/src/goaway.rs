//! Learns the last stream id of the server's HTTP/2 GOAWAY by reading the frame headers as they
//! pass, so a stream the server promised not to process is told apart from one it lost.
//!
//! RFC 9113 §6.8 and §8.7: streams above a GOAWAY's last stream id "have not been processed" and
//! are safe to send again on a new connection; every real client (browsers, Go's net/http, curl,
//! Envoy) does. A graceful server sends GOAWAY(2^31-1), waits one PING round trip, then the final
//! GOAWAY. h2's client can still lose that race: it writes its PING acknowledgement before a
//! HEADERS frame the caller had already queued, so the server names a last stream below it and
//! ignores it. h2 reports that stream and one cut by a closed connection with the same error and
//! does not expose the id, hence this reader (a frame header is 9 bytes: length, type, flags,
//! stream; GOAWAY is type 7 on stream 0 and starts with the last stream id).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const HEADER_LEN: usize = 9;
const GOAWAY: u8 = 0x7;
/// No GOAWAY yet: every stream may have been processed.
const NONE: u32 = u32::MAX;

/// The lowest last stream id of the GOAWAYs received so far, shared with the sending side.
#[derive(Debug, Clone)]
pub(crate) struct LastStream(Arc<AtomicU32>);

impl LastStream {
    /// Whether the server said it did not and will not process `stream` (HTTP/2 stream id).
    pub(crate) fn refused(&self, stream: u32) -> bool {
        let last = self.0.load(Ordering::Acquire);
        last != NONE && stream > last
    }
}

/// An I/O stream whose incoming bytes are scanned for GOAWAY frames; writes pass through.
#[derive(Debug)]
pub(crate) struct Watched<I> {
    inner: I,
    scanner: Scanner,
}

impl<I> Watched<I> {
    pub(crate) fn new(inner: I) -> (Self, LastStream) {
        let last = LastStream(Arc::new(AtomicU32::new(NONE)));
        let scanner = Scanner {
            header: [0; HEADER_LEN],
            have: 0,
            skip: 0,
            goaway_id: None,
            last: last.clone(),
        };
        (Self { inner, scanner }, last)
    }
}

/// Where the byte stream is in the frame sequence (server-to-client has no preface to skip: it
/// starts with a SETTINGS frame).
#[derive(Debug)]
struct Scanner {
    header: [u8; HEADER_LEN],
    /// Bytes of the current frame header read so far.
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    /// Inside a GOAWAY payload: the bytes of its last stream id read so far.
    goaway_id: Option<([u8; 4], usize)>,
    last: LastStream,
}

impl Scanner {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip == 0 {
                let take = (HEADER_LEN - self.have).min(bytes.len());
                self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                self.have += take;
                bytes = &bytes[take..];
                if self.have == HEADER_LEN {
                    self.have = 0;
                    let [a, b, c, kind, ..] = self.header;
                    self.skip = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                    self.goaway_id = (kind == GOAWAY && self.skip >= 4).then_some(([0; 4], 0));
                }
                continue;
            }
            let take = self.skip.min(bytes.len());
            if let Some((id, have)) = &mut self.goaway_id {
                let part = (4 - *have).min(take);
                id[*have..*have + part].copy_from_slice(&bytes[..part]);
                *have += part;
                if *have == 4 {
                    let stream = u32::from_be_bytes(*id) & 0x7fff_ffff;
                    self.last.0.fetch_min(stream, Ordering::AcqRel);
                    self.goaway_id = None;
                }
            }
            self.skip -= take;
            bytes = &bytes[take..];
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.scanner.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len())
            .expect("small payload")
            .to_be_bytes();
        let mut bytes = vec![len[1], len[2], len[3], kind, 0];
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn goaway(last: u32) -> Vec<u8> {
        let mut payload = last.to_be_bytes().to_vec();
        payload.extend_from_slice(&0u32.to_be_bytes()); // NO_ERROR
        payload.extend_from_slice(b"debug");
        frame(GOAWAY, 0, &payload)
    }

    fn scan(stream: &[u8], chunk: usize) -> LastStream {
        let (mut watched, last) = Watched::new(());
        for part in stream.chunks(chunk) {
            watched.scanner.feed(part);
        }
        last
    }

    #[test]
    fn the_final_goaway_refuses_only_the_streams_above_it() {
        let mut stream = frame(0x4, 0, &[0; 12]); // SETTINGS
        stream.extend(frame(0x1, 1, &[0x88])); // HEADERS
        stream.extend(frame(0x0, 1, b"hello")); // DATA
        // What a graceful shutdown sends: 2^31-1 first, the last processed stream later.
        stream.extend(goaway(0x7fff_ffff));
        stream.extend(frame(0x6, 0, &[0; 8])); // PING
        stream.extend(goaway(41));
        // Any split of the bytes gives the same answer.
        for chunk in [1, 2, 5, 9, 10, 13, stream.len()] {
            let last = scan(&stream, chunk);
            assert!(!last.refused(41), "chunk {chunk}");
            assert!(last.refused(43), "chunk {chunk}");
        }
    }

    #[test]
    fn without_a_goaway_nothing_is_refused() {
        let mut stream = frame(0x4, 0, &[]);
        // A DATA payload that happens to look like a GOAWAY header is still payload.
        stream.extend(frame(0x0, 3, &goaway(1)));
        let last = scan(&stream, 4);
        assert!(!last.refused(3));
        assert!(!last.refused(0x7fff_ffff));
        // The announcement alone refuses nothing a client could have opened.
        let last = scan(&goaway(0x7fff_ffff), 3);
        assert!(!last.refused(0x7fff_ffff));
    }
}
