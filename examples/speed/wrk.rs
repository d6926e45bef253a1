//! `wrk` runs and the figures read from their `--latency` output.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeVal;

use crate::{SpeedError, io};

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) rps: f64,
    /// Responses counted (`N requests in`).
    pub(crate) requests: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// The slowest request (wrk's `Latency` max).
    pub(crate) max_ms: f64,
    /// Socket errors plus non-2xx/3xx responses.
    pub(crate) errors: u64,
    /// wrk's own CPU time over the run, as a share of what its threads could have used (1.0:
    /// every wrk thread busy throughout, the client is the limit). `None` if not measured.
    pub(crate) client_busy: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    KeepAlive,
    Close,
    /// Keep-alive with this many requests written at once on each connection (wrk with
    /// [`PIPELINE_SCRIPT`]): wrk's cost per request falls by more than half, so on a machine
    /// where the plain keep-alive load is client-bound the servers become the limit again.
    Pipelined(u32),
}

/// TechEmpower's `pipeline.lua`: the request repeated `depth` (the script's argument) times
/// in one buffer, which wrk writes whole and whose responses it counts one by one.
const PIPELINE_SCRIPT: &str = "init = function(args)\n\
     local depth = tonumber(args[1]) or 1\n\
     local r = {}\n\
     for i = 1, depth do r[i] = wrk.format(nil) end\n\
     req = table.concat(r)\n\
     end\n\
     request = function() return req end\n";

/// How wrk runs: its threads, and the one CPU it is confined to, if any (`--pin`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Client {
    pub(crate) threads: usize,
    pub(crate) cpu: Option<usize>,
}

impl Client {
    /// Two threads, on any CPU.
    pub(crate) const SHARED: Client = Client {
        threads: 2,
        cpu: None,
    };
}

/// `wrk -t{threads} -c{connections} -d{seconds}s --latency` on `GET /` at `addr`, under
/// `taskset -c CPU` when the client is pinned.
pub(crate) fn wrk(
    client: Client,
    addr: SocketAddr,
    kind: Kind,
    connections: usize,
    seconds: u64,
) -> Result<Run, SpeedError> {
    let mut command = match client.cpu {
        Some(cpu) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", &cpu.to_string(), "wrk"]);
            taskset
        }
        None => Command::new("wrk"),
    };
    command.args([
        &format!("-t{}", client.threads),
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    // The pipeline script's file, removed once wrk has run.
    let mut script = None;
    match kind {
        Kind::KeepAlive => {}
        Kind::Close => {
            command.args(["-H", "Connection: close"]);
        }
        Kind::Pipelined(_) => {
            let file = tempfile::Builder::new()
                .suffix(".lua")
                .tempfile()
                .map_err(io("create wrk's pipeline script"))?;
            std::fs::write(file.path(), PIPELINE_SCRIPT)
                .map_err(io("write wrk's pipeline script"))?;
            command.arg("-s").arg(file.path());
            script = Some(file);
        }
    }
    command.arg(format!("http://{addr}/"));
    if let Kind::Pipelined(depth) = kind {
        // The script's arguments follow the URL.
        command.args(["--", &depth.to_string()]);
    }
    // wrk is the only child reaped meanwhile (the servers run on), so the children's CPU time
    // grows by wrk's alone.
    let before = children_cpu();
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(io("run wrk"))?;
    let after = children_cpu();
    drop(script);
    let text = String::from_utf8_lossy(&output.stdout);
    let mut run = parse_wrk(&text)
        .ok_or_else(|| SpeedError::Failed(format!("cannot read wrk's output:\n{text}")))?;
    run.client_busy = before
        .zip(after)
        .map(|(before, after)| (after - before) / (seconds as f64 * client.threads as f64));
    Ok(run)
}

/// User plus system CPU seconds of this process's reaped children.
fn children_cpu() -> Option<f64> {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).ok()?;
    let seconds = |t: TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(seconds(usage.user_time()) + seconds(usage.system_time()))
}

/// A wrk duration (`900.00us`, `1.61ms`, `1.02s`, `2.00m`) in ms.
fn to_ms(text: &str) -> Option<f64> {
    if let Some(us) = text.strip_suffix("us") {
        Some(us.parse::<f64>().ok()? / 1000.0)
    } else if let Some(ms) = text.strip_suffix("ms") {
        ms.parse().ok()
    } else if let Some(m) = text.strip_suffix('m') {
        Some(m.parse::<f64>().ok()? * 60_000.0)
    } else {
        Some(text.strip_suffix('s')?.parse::<f64>().ok()? * 1000.0)
    }
}

/// Requests/sec, the 50 % and 99 % latency, the slowest and the errors from wrk's `--latency`
/// output.
fn parse_wrk(text: &str) -> Option<Run> {
    let value = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim_start().strip_prefix(prefix).map(str::trim))
    };
    let rps = value("Requests/sec:")?.parse().ok()?;
    let requests = text
        .lines()
        .find_map(|l| l.trim_start().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())?;
    let p50_ms = to_ms(value("50%")?)?;
    let p99_ms = to_ms(value("99%")?)?;
    // `Latency   avg   stdev   max   +/- stdev` (the thread statistics, before the distribution).
    let max_ms = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("Latency"))
        .find_map(|rest| to_ms(rest.split_whitespace().nth(2)?))
        .unwrap_or(f64::NAN);
    let non_2xx = value("Non-2xx or 3xx responses:").map_or(Some(0), |n| n.parse().ok())?;
    let socket = value("Socket errors:").map_or(0, |s| {
        s.split(',')
            .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    });
    Some(Run {
        rps,
        requests,
        p50_ms,
        p99_ms,
        max_ms,
        errors: non_2xx + socket,
        client_busy: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 5s test @ http://127.0.0.1:1/\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   631.37us    1.61ms   1.02s    92.36%\n  Latency Distribution\n     50%  200.00us\n     99%    1.61ms\n  640000 requests in 5.00s, 80.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec: 128000.50\n";
        let run = parse_wrk(text).expect("parsed");
        assert!((run.rps - 128_000.5).abs() < 0.01);
        assert_eq!(run.requests, 640_000);
        assert!((run.p50_ms - 0.2).abs() < 1e-9);
        assert!((run.p99_ms - 1.61).abs() < 1e-9);
        assert!((run.max_ms - 1020.0).abs() < 1e-9);
        assert_eq!(run.errors, 7);
        let micros = text.replace("1.61ms", "900.00us");
        assert!((parse_wrk(&micros).expect("parsed").p99_ms - 0.9).abs() < 1e-9);
    }
}
