//! An HTTP/2 stream above the server's GOAWAY last stream id was not processed, so it is sent
//! again on a new connection and counted as refused, never as lost; one below it that the
//! server drops is a failure. The server here writes raw frames, so each case is exact.

use std::net::SocketAddr;
use std::time::Duration;

use loadgen::{FailureKind, LoadConfig, Mode, Report};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PREFACE_LEN: usize = 24;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM_AND_HEADERS: u8 = 0x5;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("small payload")
        .to_be_bytes();
    let mut bytes = vec![len[1], len[2], len[3], kind, flags];
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

fn goaway(last: u32) -> Vec<u8> {
    let mut payload = last.to_be_bytes().to_vec();
    payload.extend_from_slice(&0_u32.to_be_bytes()); // NO_ERROR
    frame(GOAWAY, 0, 0, &payload)
}

/// Reads the client preface and frames until the first HEADERS: the request was sent.
async fn read_request(stream: &mut TcpStream) {
    let mut preface = [0_u8; PREFACE_LEN];
    stream.read_exact(&mut preface).await.expect("preface");
    loop {
        let mut header = [0_u8; 9];
        stream.read_exact(&mut header).await.expect("frame header");
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0_u8; len];
        stream
            .read_exact(&mut payload)
            .await
            .expect("frame payload");
        if header[3] == HEADERS {
            return;
        }
    }
}

/// Holds the connection open until the client closes it, as a draining server would.
async fn until_closed(mut stream: TcpStream) {
    let mut sink = [0_u8; 1024];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// A server that, on each of its connections in turn, answers the request on stream 1 with a
/// GOAWAY whose last stream id is `last[i]`, or with `200` when `last[i]` is `None`.
async fn server(last: Vec<Option<u32>>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        for last in last {
            let (mut stream, _) = listener.accept().await.expect("accept");
            read_request(&mut stream).await;
            let mut reply = frame(SETTINGS, 0, 0, &[]);
            match last {
                Some(last) => reply.extend(goaway(last)),
                // HPACK static table entry 8 is `:status: 200`.
                None => reply.extend(frame(HEADERS, END_STREAM_AND_HEADERS, 1, &[0x88])),
            }
            stream.write_all(&reply).await.expect("write");
            if last.is_some() {
                // A draining server closes once its streams are done (here: none it will answer).
                stream.shutdown().await.expect("shutdown");
            }
            tokio::spawn(until_closed(stream));
        }
    });
    (addr, task)
}

async fn one_request(addr: SocketAddr) -> Report {
    let load = loadgen::start(LoadConfig {
        mode: Mode::H2,
        connections: 1,
        max_requests: Some(1),
        request_timeout: Duration::from_secs(10),
        ..LoadConfig::new(addr)
    });
    tokio::time::timeout(Duration::from_secs(30), load.wait())
        .await
        .expect("the run ends by its own bounds")
}

#[tokio::test]
async fn a_stream_above_the_goaway_is_sent_again_and_counted_as_refused() {
    let (addr, server) = server(vec![Some(0), None]).await;
    let report = one_request(addr).await;
    assert_eq!((report.ok, report.failed()), (1, 0), "{report}");
    assert_eq!(report.refused, 1, "{report}");
    assert_eq!(report.connects, 2, "{report}");
    assert!(
        report.to_string().contains("1 refused by GOAWAY"),
        "{report}"
    );
    server.await.expect("server task");
}

#[tokio::test]
async fn a_stream_the_goaway_covers_is_lost_when_the_answer_never_comes() {
    // Last stream 1: the server says it may have processed the request, then closes.
    let (addr, server) = server(vec![Some(1)]).await;
    let report = one_request(addr).await;
    assert_eq!((report.ok, report.refused), (0, 0), "{report}");
    assert_eq!(
        report.failures.get(&FailureKind::EarlyClose),
        Some(&1),
        "{report}"
    );
    server.await.expect("server task");
}

#[tokio::test]
async fn refusals_are_bounded() {
    // Sent again three times, then the fourth refusal is a failure.
    let (addr, server) = server(vec![Some(0); 4]).await;
    let report = one_request(addr).await;
    assert_eq!((report.refused, report.failed()), (3, 1), "{report}");
    assert!(
        report.to_string().contains("refused by GOAWAY on 4"),
        "{report}"
    );
    server.await.expect("server task");
}
