//! The servers `speed` measures: nginx, bare axum and baton, each started on a free loopback
//! port in its own directory, checked to answer, and stopped when its guard is dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::handover::{gone, is_ours, who_answers};
use crate::{LIMIT, SpeedError, io, serve};

/// A started server, stopped when dropped: SIGTERM, then SIGKILL after 5 s, then reaped.
pub(crate) struct Server {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    child: Child,
}

impl Server {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master then stops its workers, which a SIGKILL would orphan.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A baton lineage: the first generation is our child (`server`), later ones are not, so the
/// generation that answers in `dir` is stopped by its pid first, when dropped.
pub(crate) struct Baton {
    pub(crate) server: Server,
    pub(crate) admin: SocketAddr,
    pub(crate) dir: std::path::PathBuf,
}

impl Drop for Baton {
    fn drop(&mut self) {
        stop_current(self.server.addr, &self.dir);
    }
}

/// A port the kernel picked and let go of, for nginx, which cannot report one itself.
pub(crate) fn free_port() -> Result<u16, SpeedError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind 127.0.0.1:0"))?;
    Ok(listener.local_addr().map_err(io("local address"))?.port())
}

/// Waits until `GET /` on `addr` answers 200.
fn wait_serving(name: &str, addr: SocketAddr) -> Result<(), SpeedError> {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if loadgen::get_blocking(addr, "/", Duration::from_secs(1)).is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(SpeedError::Failed(format!(
        "{name} did not answer on {addr} within {LIMIT:?}"
    )))
}

/// nginx `return 200 "Hello"`, `worker_processes auto`, with `worker_connections` per worker.
pub(crate) fn start_nginx(dir: &Path, worker_connections: usize) -> Result<Server, SpeedError> {
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    let text = format!(
        "worker_processes auto;\npid {pid};\nerror_log {err} warn;\n\
         events {{ worker_connections {worker_connections}; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
         client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n  fastcgi_temp_path {tmp};\n\
         uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n\
         server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"Hello\"; }} }}\n}}\n",
        pid = dir.join("nginx.pid").display(),
        err = dir.join("nginx.err").display(),
        tmp = dir.display(),
    );
    std::fs::write(&conf, text).map_err(io("write nginx.conf"))?;
    let child = Command::new("nginx")
        .args(["-p", &dir.display().to_string(), "-c"])
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io("start nginx"))?;
    let server = Server {
        name: "nginx".into(),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        child,
    };
    wait_serving("nginx", server.addr)?;
    Ok(server)
}

/// bare axum; with `nodelay`, with TCP_NODELAY on its connections as baton sets it.
pub(crate) fn start_bare(program: &Path, dir: &Path, nodelay: bool) -> Result<Server, SpeedError> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let child = Command::new(program)
        .arg(addr.to_string())
        .args(nodelay.then_some("--nodelay"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io("start bare_axum"))?;
    let name = if nodelay {
        "bare axum, TCP_NODELAY"
    } else {
        "bare axum"
    };
    let server = Server {
        name: name.into(),
        addr,
        child,
    };
    wait_serving("bare axum", addr)?;
    Ok(server)
}

/// baton with its defaults, but on free loopback ports, with the given lame duck and a short
/// probation, so the upgrades of the handover figures follow each other quickly; `extra` is
/// appended to its configuration file.
pub(crate) fn start_baton(
    name: String,
    program: &Path,
    dir: &Path,
    lame_duck: &str,
    extra: &str,
) -> Result<Baton, SpeedError> {
    let (http, admin) = (free_port()?, free_port()?);
    std::fs::create_dir_all(dir.join("config")).map_err(io("create config/"))?;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{http}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
         [lifecycle]\nlame_duck = \"{lame_duck}\"\n\n\
         [upgrade]\nprobation = \"300ms\"\n{extra}"
    );
    std::fs::write(dir.join("config/default.toml"), text).map_err(io("write the config"))?;
    let child = serve::serve_command(program, dir)
        .map_err(io("baton.log"))?
        .spawn()
        .map_err(io("start baton"))?;
    let baton = Baton {
        server: Server {
            name,
            addr: SocketAddr::from(([127, 0, 0, 1], http)),
            child,
        },
        admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        dir: dir.to_path_buf(),
    };
    wait_serving(&baton.server.name, baton.server.addr)?;
    Ok(baton)
}

/// Stops the generation that answers on `addr` (after upgrades it is not our child any more),
/// by the pid it reports once `/proc` shows it runs in `dir`, and waits (bounded) until it is
/// gone.
fn stop_current(addr: SocketAddr, dir: &Path) {
    if let Some(pid) = who_answers(addr)
        .filter(|p| is_ours(*p, dir))
        .and_then(|p| i32::try_from(p).ok())
    {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + LIMIT;
        while !gone(pid.unsigned_abs()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
