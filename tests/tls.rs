//! TLS on the public listener (issue 11), with the real binary: HTTPS through upgrades, a
//! certificate reload seen by new connections only, bad pairs rejected with the old one kept,
//! sessions resumed across an upgrade, bounded handshakes. Certificates are made here with
//! `rcgen`, by a CA of the test's own that the client trusts (verification is never off).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use loadgen::{Mode, Tls};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType,
    SerialNumber,
};
use support::{
    Config, DEADLINE, REQUEST_TIMEOUT, Server, TlsSetup, block_on, start_https_load, stop_load,
    wait_until,
};

const CERT: &str = "tls/cert.pem";
const KEY: &str = "tls/key.pem";

/// A certificate authority of the test's own.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate and its key, as files hold them.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "baton test CA");
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    fn client(&self) -> Tls {
        Tls::with_ca_pem(self.issuer.pem().as_bytes()).expect("the CA loads")
    }

    /// A certificate for 127.0.0.1 and localhost, valid until `not_after`.
    fn issue_until(&self, serial: u64, not_after: (i32, u8, u8)) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn issue(&self, serial: u64) -> Leaf {
        self.issue_until(serial, (2100, 1, 1))
    }
}

/// A server speaking HTTPS with `leaf`, not started yet.
fn prepare(ca: &Ca, leaf: &Leaf, tweak: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config {
        tls: Some(TlsSetup {
            cert: CERT.into(),
            key: KEY.into(),
            handshake_timeout: "10s".into(),
            client: ca.client(),
        }),
        ..Config::default()
    };
    tweak(&mut config);
    let server = Server::prepare(&config);
    std::fs::create_dir(server.root().join("tls")).expect("create tls/");
    install(&server, leaf);
    server
}

fn start(ca: &Ca, leaf: &Leaf) -> Server {
    let mut server = prepare(ca, leaf, |_| {});
    server.spawn();
    server
}

/// Replaces the pair on disk, each file atomically, as a deployment tool does.
fn install(server: &Server, leaf: &Leaf) {
    write_file(server, CERT, &leaf.cert_pem);
    write_file(server, KEY, &leaf.key_pem);
}

fn write_file(server: &Server, name: &str, text: &str) {
    let path = server.root().join(name);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, &path).expect("rename into place");
}

/// `GET path` over HTTPS on a new connection, with `tls`'s session cache.
fn get(server: &Server, tls: &Tls, path: &str) -> loadgen::Response {
    block_on(loadgen::get_tls(server.http, path, tls))
        .unwrap_or_else(|e| panic!("GET {path} over TLS: {e}; log:\n{}", server.log()))
}

/// The certificate a new connection is shown.
fn served_certificate(server: &Server, tls: &Tls) -> Vec<u8> {
    let response = get(server, &tls.clone().without_resumption(), "/healthz");
    response.tls.expect("a TLS response").peer_certificate
}

fn status_serial(server: &Server) -> String {
    server.status()["tls"]["certificate"]["serial"]
        .as_str()
        .expect("/-/status shows the certificate's serial")
        .to_owned()
}

#[test]
fn https_speaks_http1_and_h2_and_shows_the_certificate() {
    let ca = Ca::new();
    let leaf = ca.issue(0x1a2b);
    let server = start(&ca, &leaf);
    let tls = ca.client();

    let response = get(&server, &tls, "/");
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(response.body.starts_with("Hello from the test"));
    let info = response.tls.expect("TLS");
    assert_eq!(info.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(info.peer_certificate, leaf.der);

    // HTTP/2 by ALPN, through the same serving code.
    let report = block_on(async {
        let load = loadgen::start(loadgen::LoadConfig {
            connections: 2,
            mode: Mode::H2,
            max_requests: Some(50),
            tls: Some(tls.clone()),
            ..loadgen::LoadConfig::new(server.http)
        });
        load.wait().await
    });
    assert_eq!((report.ok, report.failed()), (50, 0), "{report}");

    // Plain HTTP on the HTTPS port is a failed handshake, not a response.
    assert!(loadgen::get_blocking(server.http, "/", REQUEST_TIMEOUT).is_err());

    assert_eq!(status_serial(&server), "1A2B");
    let status = server.status();
    assert_eq!(status["tls"]["certificate"]["subject"], "CN=localhost");
    assert!(
        status["tls"]["certificate"]["not_after"]
            .as_str()
            .is_some_and(|at| at.starts_with("2100-01-01")),
        "{status}"
    );
    let expiry = server.metric(
        "baton_tls_cert_expiry_timestamp_seconds{subject=\"CN=localhost\",serial=\"1A2B\"}",
    );
    assert_eq!(expiry, 4_102_444_800.0, "2100-01-01T00:00:00Z");
    assert!(server.metric("baton_tls_handshakes_total{kind=\"full\"}") >= 3.0);
    wait_until(
        DEADLINE,
        "the plain request to count as a failed handshake",
        || server.metric("baton_tls_handshake_failures_total{reason=\"protocol\"}") >= 1.0,
    );

    let check = server.run_baton(&["check"]);
    assert_eq!(check.code, Some(0), "{check}");
    assert!(
        check.stderr.contains("subject CN=localhost") && check.stderr.contains("serial 1A2B"),
        "{check}"
    );

    // The container health check speaks TLS, pinned to the certificate in tls.cert.
    let addr = server.http.to_string();
    let health = server.run_baton(&["health", "--addr", &addr]);
    assert_eq!(health.code, Some(0), "{health}");
    assert!(
        health.stdout.contains("healthy") && health.stdout.contains("TLS"),
        "{health}"
    );
    write_file(&server, CERT, &ca.issue(0x99).cert_pem);
    let health = server.run_baton(&["health", "--addr", &addr]);
    assert_eq!(
        health.code,
        Some(1),
        "another certificate on disk than served: {health}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_under_ten_upgrades_loses_no_request() {
    let ca = Ca::new();
    // `baton upgrade` waits through each probation, which this test is not about.
    let mut server = prepare(&ca, &ca.issue(1), |config| {
        config.probation = "300ms".into()
    });
    server.spawn();
    // Keep-alive and a connection per request over HTTP/1.1, and HTTP/2: each with resumed
    // sessions (the default), so the close mode resumes across generations too.
    let loads = [
        start_https_load(&server, Mode::KeepAlive, 8),
        start_https_load(&server, Mode::Close, 4),
        start_https_load(&server, Mode::H2, 4),
    ];
    for generation in 2..=11 {
        let (old, new) = server.upgrade();
        assert_ne!(old, new);
        wait_until(DEADLINE, "the new generation to serve", || {
            server.hello().generation == generation
        });
    }
    for load in loads {
        let report = stop_load(load).await;
        // Shown with --nocapture: how many h2 requests GOAWAY refused and the client re-sent.
        println!("{report}");
        assert!(report.ok > 0, "{report}");
        assert_eq!(report.failed(), 0, "{report}\nlog:\n{}", server.log());
    }
    assert!(
        server.metric("baton_tls_handshakes_total{kind=\"resumed\"}") > 0.0,
        "per-request connections resume their sessions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_is_for_new_connections_and_open_ones_keep_going() {
    let ca = Ca::new();
    let first = ca.issue(0xa1);
    let server = start(&ca, &first);
    let tls = ca.client();
    assert_eq!(served_certificate(&server, &tls), first.der);

    let connections = 4;
    let load = start_https_load(&server, Mode::KeepAlive, connections);
    let second = ca.issue(0xb2);
    install(&server, &second);
    let out = server.run_cli(&["reload"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("reloaded"), "{out}");

    assert_eq!(served_certificate(&server, &tls), second.der);
    assert_eq!(status_serial(&server), "B2");
    // The connections opened before the reload are the ones still serving.
    let before = load.snapshot().ok;
    wait_until(DEADLINE, "requests on the old connections", || {
        load.snapshot().ok > before + 100
    });
    let report = stop_load(load).await;
    assert_eq!(report.failed(), 0, "{report}");
    assert_eq!(
        report.connects, connections as u64,
        "no connection was closed by the reload: {report}"
    );

    // The same pair again: nothing to swap.
    let out = server.run_cli(&["reload"]);
    assert!(out.stdout.contains("unchanged"), "{out}");
}

#[test]
fn each_bad_pair_is_a_rejected_reload_and_the_old_certificate_stays() {
    let ca = Ca::new();
    let good = ca.issue(0x600d);
    let server = start(&ca, &good);
    let tls = ca.client();
    let other = ca.issue(0x07);
    let expired = ca.issue_until(0x0e, (2021, 1, 1));

    // What each case is, how it breaks the pair, and what the rejection must say.
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a [&'a str]);
    let cases: [Case; 5] = [
        (
            "unreadable certificate",
            Box::new(|| {
                std::fs::remove_file(server.root().join(CERT)).expect("remove");
            }),
            &[CERT, "cannot read"],
        ),
        (
            "not PEM",
            Box::new(|| write_file(&server, CERT, "this is not a certificate\n")),
            &[CERT, "no certificate found"],
        ),
        (
            "a key in place of the certificate",
            Box::new(|| write_file(&server, CERT, &good.key_pem)),
            &[CERT, "no certificate found"],
        ),
        (
            "key that does not match",
            Box::new(|| {
                write_file(&server, CERT, &good.cert_pem);
                write_file(&server, KEY, &other.key_pem);
            }),
            &[KEY, "does not match", CERT],
        ),
        (
            "expired",
            Box::new(|| install(&server, &expired)),
            &[CERT, "expired", "0E"],
        ),
    ];
    for (case, break_it, expected) in cases {
        break_it();
        let out = server.run_cli(&["reload"]);
        assert_eq!(out.code, Some(1), "{case}: {out}");
        for words in expected {
            assert!(
                out.stderr.contains(words),
                "{case}: expected {words:?} in:\n{out}"
            );
        }
        assert!(
            out.stderr.contains("the certificate in force stays"),
            "{case}: {out}"
        );
        assert_eq!(served_certificate(&server, &tls), good.der, "{case}");
        assert_eq!(status_serial(&server), "600D", "{case}");
        install(&server, &good);
    }
    assert_eq!(server.metric("baton_reloads_total{result=\"failed\"}"), 5.0);
    // `baton check` says the same before anything is signalled.
    install(&server, &expired);
    let check = server.run_baton(&["check"]);
    assert_eq!(check.code, Some(1), "{check}");
    assert!(check.stderr.contains("expired"), "{check}");
}

#[test]
fn a_session_from_one_generation_resumes_on_the_next() {
    let ca = Ca::new();
    let server = start(&ca, &ca.issue(5));
    let tls = ca.client();
    let first = get(&server, &tls, "/").tls.expect("TLS");
    assert!(!first.resumed, "a first connection negotiates in full");
    assert!(get(&server, &tls, "/").tls.expect("TLS").resumed);

    for generation in [2, 3] {
        server.upgrade();
        wait_until(DEADLINE, "the new generation to serve", || {
            server.hello().generation == generation
        });
        let response = get(&server, &tls, "/");
        assert!(
            support::Hello::parse(&response.body).generation == generation,
            "{}",
            response.body
        );
        assert!(
            response.tls.expect("TLS").resumed,
            "generation {generation} resumes the session a previous one made; log:\n{}",
            server.log()
        );
    }
}

#[test]
fn turning_tls_off_by_a_reload_needs_an_upgrade() {
    let ca = Ca::new();
    let server = start(&ca, &ca.issue(9));
    server.write_config(&Config::default().toml());
    let out = server.run_cli(&["reload"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout
            .contains("tls.cert, tls.key take effect at the next upgrade"),
        "{out}"
    );
    assert_eq!(get(&server, &ca.client(), "/").status, 200, "still HTTPS");
}

#[test]
fn one_of_cert_and_key_is_a_configuration_error() {
    let ca = Ca::new();
    let server = prepare(&ca, &ca.issue(3), |config| config.tls = None);
    let toml = Config::default()
        .toml()
        .replace("[tls]\n", &format!("[tls]\ncert = \"{CERT}\"\n"));
    server.write_config(&toml);
    let check = server.run_baton(&["check"]);
    assert_eq!(check.code, Some(1), "{check}");
    assert!(
        check.stderr.contains("tls.cert") && check.stderr.contains("tls.key is not set"),
        "{check}"
    );
}

#[test]
fn a_client_that_never_finishes_its_handshake_is_closed() {
    let ca = Ca::new();
    let mut server = prepare(&ca, &ca.issue(4), |config| {
        if let Some(tls) = &mut config.tls {
            tls.handshake_timeout = "500ms".into();
        }
    });
    server.spawn();
    let mut stream = TcpStream::connect(server.http).expect("connect");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    // The start of a TLS record announcing a ClientHello that never comes.
    stream
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .expect("write");
    let started = Instant::now();
    let mut byte = [0_u8; 1];
    let read = stream.read(&mut byte);
    let took = started.elapsed();
    assert!(
        matches!(read, Ok(0))
            || read.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the server closes the connection"
    );
    assert!(
        took >= Duration::from_millis(400) && took < DEADLINE,
        "closed after {took:?}, expected about 500ms"
    );
    wait_until(DEADLINE, "the handshake timeout to be counted", || {
        server.metric("baton_tls_handshake_failures_total{reason=\"timeout\"}") == 1.0
    });
}

#[test]
fn a_supervised_worker_resumes_the_sessions_of_the_one_it_replaces() {
    let ca = Ca::new();
    let mut server = prepare(&ca, &ca.issue(6), |_| {});
    server.spawn_supervised();
    let tls = ca.client();
    assert!(!get(&server, &tls, "/").tls.expect("TLS").resumed);

    // The supervisor relays the ticket keys from each worker to the next.
    for generation in [2, 3] {
        let out = server.run_cli(&["upgrade"]);
        assert_eq!(out.code, Some(0), "{out}\nlog:\n{}", server.log());
        wait_until(DEADLINE, "the next worker to serve", || {
            server.hello().generation == generation
        });
        let response = get(&server, &tls, "/");
        assert!(
            response.tls.expect("TLS").resumed,
            "worker generation {generation} resumes an earlier worker's session; log:\n{}",
            server.log()
        );
    }
}

#[test]
fn with_reload_watch_a_renewed_certificate_is_picked_up_by_itself() {
    let ca = Ca::new();
    let first = ca.issue(0x11);
    let mut server = prepare(&ca, &first, |config| {
        config.watch = true;
        config.debounce = "100ms".into();
    });
    // A Kubernetes Secret volume, as cert-manager's Secret is mounted: the files are links
    // into `..data`, itself a link to a timestamped directory.
    let tls_dir = server.root().join("tls");
    let version = |name: &str, leaf: &Leaf| {
        let dir = tls_dir.join(name);
        std::fs::create_dir(&dir).expect("create a Secret version");
        std::fs::write(dir.join("cert.pem"), &leaf.cert_pem).expect("write");
        std::fs::write(dir.join("key.pem"), &leaf.key_pem).expect("write");
    };
    let swap_data_link = |name: &str| {
        let tmp = tls_dir.join("..data_tmp");
        std::os::unix::fs::symlink(name, &tmp).expect("link");
        std::fs::rename(&tmp, tls_dir.join("..data")).expect("swap ..data");
    };
    version("..v1", &first);
    swap_data_link("..v1");
    for file in ["cert.pem", "key.pem"] {
        std::fs::remove_file(tls_dir.join(file)).expect("remove the plain file");
        std::os::unix::fs::symlink(format!("..data/{file}"), tls_dir.join(file)).expect("link");
    }
    server.spawn();
    let tls = ca.client();
    assert_eq!(served_certificate(&server, &tls), first.der);

    let second = ca.issue(0x22);
    version("..v2", &second);
    swap_data_link("..v2");
    wait_until(
        DEADLINE,
        "the Secret's new certificate to be served",
        || served_certificate(&server, &tls) == second.der,
    );

    // A file replaced in place (certbot, a deployment tool) is seen too.
    let third = ca.issue(0x33);
    install(&server, &third);
    wait_until(
        DEADLINE,
        "the replaced files' certificate to be served",
        || served_certificate(&server, &tls) == third.der,
    );
    assert_eq!(status_serial(&server), "33");
}

/// A client that finishes its handshake and then says nothing is held to `[limits]` like a
/// plain one: cut at `limits.header_read_timeout` counted from the handshake's end, over
/// HTTP/1.1 and h2 alike (the handshake's bytes are not an HTTP/2 preface).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_after_its_handshake_is_cut_at_the_header_bound() {
    use std::sync::Arc;

    use tokio::io::AsyncReadExt as _;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let ca = Ca::new();
    let mut server = prepare(&ca, &ca.issue(8), |_| {});
    let toml = std::fs::read_to_string(server.config_path()).expect("read the config");
    server.write_config(&format!("{toml}\n[limits]\nheader_read_timeout = \"1s\"\n"));
    server.spawn();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.issuer.pem().as_bytes()).expect("CA PEM"))
        .expect("CA root");
    for alpn in ["http/1.1", "h2"] {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
        let tcp = tokio::net::TcpStream::connect(server.http)
            .await
            .expect("connect");
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::IpAddress(server.http.ip().into()), tcp)
            .await
            .expect("the handshake");
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(alpn.as_bytes()),
            "{alpn}"
        );
        let shaken = Instant::now();
        // Read to the end (h2: past the server's SETTINGS, which it sends at once).
        let mut received = Vec::new();
        let read = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut received))
            .await
            .unwrap_or_else(|_| panic!("{alpn}: still open after {DEADLINE:?}"));
        let took = shaken.elapsed();
        // A cut is an end without close_notify: rustls reports it as an error.
        assert!(
            alpn == "h2" || received.is_empty(),
            "{alpn}: the server had nothing to say: {received:?} ({read:?})"
        );
        assert!(
            took >= Duration::from_millis(900),
            "{alpn}: closed after {took:?}, before the 1s bound"
        );
    }
    wait_until(DEADLINE, "both cuts to be counted", || {
        server.metric("baton_connections_closed_total{reason=\"header_timeout\"}") >= 2.0
    });
}
