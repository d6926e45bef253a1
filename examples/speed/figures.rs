//! The many-connections mode's output: what was run, then per connection count a table of the
//! figures (medians over rounds and upgrades) and a table of issue 17's targets, each marked
//! met or missed. Printed, never asserted.

use std::collections::BTreeMap;

use loadgen::FailureKind;

use crate::crowd::{Contender, RunFigures, UpgradeFigures};
use crate::handover::{Handover, print_steps};
use crate::host::FdLimit;
use crate::{Options, median};

/// A figure above this share of the client's ceiling may be the client's limit.
const CLIENT_BOUND: f64 = 0.8;

pub(crate) fn print_header(
    options: &Options,
    fds: &FdLimit,
    lame_duck: &str,
    extra: &str,
    workers: usize,
) {
    let counts: Vec<String> = options.crowd.iter().map(usize::to_string).collect();
    println!("Many keep-alive connections: {}", counts.join(", "));
    println!(
        "- clients: wrk -t2 -cN for the steady figures; loadgen (HTTP/1.1 keep-alive GET /, \
         never retries, every failure counted by kind; tokio runtime with {workers} worker \
         threads, in this process) for a steady window and the upgrades"
    );
    println!(
        "- per server and round: wrk for {0} s; then loadgen: open all connections and let each \
         serve 2 requests (warm-up), {0} s steady, then for baton {1} upgrades (SIGUSR2) at \
         least {2} s apart, under the same load; {3} interleaved rounds whose order rotates, \
         nginx in them as the clients' ceiling",
        options.seconds,
        options.crowd_upgrades,
        crate::crowd::UPGRADE_SPACING.as_secs(),
        options.rounds
    );
    let raised = fds
        .raised_from
        .map_or_else(String::new, |from| format!(" (raised from {from})"));
    println!(
        "- open-files limit: soft {}{raised}, hard {}; the servers inherit it",
        fds.soft, fds.hard
    );
    let limits = if extra.is_empty() {
        "limits.max_connections at its default (10000), under the fd limit less 256: every \
         connection is admitted"
            .to_owned()
    } else {
        format!(
            "set in its config file: {}",
            extra.trim().replace('\n', " ")
        )
    };
    println!("- baton: lifecycle.lame_duck = {lame_duck}, upgrade.probation = 300ms, {limits}");
}

/// `value` with one decimal below 100, none above or for a whole number.
fn num(value: f64) -> String {
    if !value.is_finite() {
        "–".to_owned()
    } else if value.abs() < 100.0 && value.fract() != 0.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

fn median_of(runs: &[RunFigures], f: impl Fn(&RunFigures) -> f64) -> f64 {
    median(runs.iter().map(f).collect())
}

fn upgrades(runs: &[RunFigures]) -> Vec<&UpgradeFigures> {
    runs.iter().flat_map(|run| &run.upgrades).collect()
}

/// Median and max of an upgrade figure over every upgrade of every round.
fn median_max(runs: &[RunFigures], f: impl Fn(&UpgradeFigures) -> f64) -> (f64, f64) {
    let values: Vec<f64> = upgrades(runs).into_iter().map(f).collect();
    let max = values.iter().copied().fold(f64::NAN, f64::max);
    (median(values), max)
}

fn failures(runs: &[RunFigures]) -> BTreeMap<FailureKind, u64> {
    let mut all = BTreeMap::new();
    for run in runs {
        for (kind, count) in &run.failures {
            *all.entry(*kind).or_insert(0) += count;
        }
    }
    all
}

fn failures_text(all: &BTreeMap<FailureKind, u64>) -> String {
    if all.is_empty() {
        return "0".to_owned();
    }
    let total: u64 = all.values().sum();
    let kinds: Vec<String> = all.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!("{total} ({})", kinds.join(", "))
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

/// The best req/s against nginx of one client: its ceiling at this count.
fn ceiling(contenders: &[Contender], runs: &[Vec<RunFigures>], rps: fn(&RunFigures) -> f64) -> f64 {
    contenders
        .iter()
        .zip(runs)
        .filter(|(c, _)| c.is_nginx())
        .flat_map(|(_, r)| r)
        .map(rps)
        .fold(f64::NAN, f64::max)
}

/// The tables of one connection count.
pub(crate) fn print_count(count: usize, contenders: &[Contender], runs: &[Vec<RunFigures>]) {
    let wrk_ceiling = ceiling(contenders, runs, |x| x.wrk.rps);
    let load_ceiling = ceiling(contenders, runs, |x| x.rps);
    println!("\n### {count} keep-alive connections\n");
    println!(
        "Client ceilings (best round against nginx at {count} connections): wrk {wrk_ceiling:.0} \
         req/s, loadgen {load_ceiling:.0} req/s; a server with a round above {:.0} % of its \
         client's ceiling is marked client-bound.\n",
        CLIENT_BOUND * 100.0
    );
    let names: Vec<&str> = contenders.iter().map(|c| c.name.as_str()).collect();
    println!("| | {} |", names.join(" | "));
    println!("| --- |{}", " ---: |".repeat(contenders.len()));
    let row = |label: &str, cell: &dyn Fn(usize, &[RunFigures]) -> String| {
        let cells: Vec<String> = runs.iter().enumerate().map(|(i, r)| cell(i, r)).collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    let baton_only = |i: usize, text: String| {
        if contenders[i].is_baton() {
            text
        } else {
            "–".to_owned()
        }
    };
    let rps_cell = |i: usize, r: &[RunFigures], ceiling: f64, rps: fn(&RunFigures) -> f64| {
        let each: Vec<String> = r.iter().map(|x| format!("{:.0}", rps(x))).collect();
        let near = r.iter().any(|x| rps(x) > CLIENT_BOUND * ceiling);
        let bound = if near && !contenders[i].is_nginx() {
            ", client-bound"
        } else {
            ""
        };
        format!("{:.0} ({}{bound})", median_of(r, rps), each.join(", "))
    };
    let latencies = |r: &[RunFigures], f: [fn(&RunFigures) -> f64; 3]| {
        let [a, b, c] = f.map(|f| num(median_of(r, f)));
        format!("{a} / {b} / {c}")
    };

    row(&format!("**wrk -t2 -c{count}, steady**"), &|_, _| {
        String::new()
    });
    row("req/s, median (rounds)", &|i, r| {
        rps_cell(i, r, wrk_ceiling, |x| x.wrk.rps)
    });
    row("p50 / p99 / max ms, medians", &|_, r| {
        latencies(r, [|x| x.wrk.p50_ms, |x| x.wrk.p99_ms, |x| x.wrk.max_ms])
    });
    row("p99 ms by round", &|_, r| {
        let each: Vec<String> = r.iter().map(|x| num(x.wrk.p99_ms)).collect();
        each.join(", ")
    });
    row("errors (socket errors and non-2xx)", &|_, r| {
        r.iter().map(|x| x.wrk.errors).sum::<u64>().to_string()
    });

    row(
        &format!("**loadgen, {count} connections, steady window**"),
        &|_, _| String::new(),
    );
    row("req/s, median (rounds)", &|i, r| {
        rps_cell(i, r, load_ceiling, |x| x.rps)
    });
    row("p50 / p99 / max ms, medians", &|_, r| {
        latencies(r, [|x| x.p50_ms, |x| x.p99_ms, |x| x.max_ms])
    });
    row(
        "CPU, cores: client / server / whole machine busy",
        &|_, r| {
            let each: [fn(&RunFigures) -> f64; 3] =
                [|x| x.client_cores, |x| x.server_cores, |x| x.machine_cores];
            each.map(|f| format!("{:.2}", median_of(r, f))).join(" / ")
        },
    );

    row(
        "**loadgen, upgrades under that load**, medians (max)",
        &|_, _| String::new(),
    );
    let upgrade_row = |label: &str, f: fn(&UpgradeFigures) -> f64| {
        row(label, &|i, r| {
            let (median, max) = median_max(r, f);
            baton_only(i, format!("{} ({})", num(median), num(max)))
        });
    };
    upgrade_row(
        "handover: SIGUSR2 to a new connection served by the new pid, ms",
        |u| u.handover.served_ms,
    );
    upgrade_row(
        "the upgrade's start to the new generation ready (its /-/status), ms",
        |u| u.handover.ready_ms,
    );
    upgrade_row(
        "req/s of the requests started in the 1 s after SIGUSR2",
        |u| u.rps_after,
    );
    upgrade_row(
        "p99 of the requests started in the 1 s after SIGUSR2, ms",
        |u| u.p99_after_ms,
    );
    upgrade_row(
        "the same, of the requests that opened a new connection, ms",
        |u| u.p99_after_reconnected_ms,
    );
    upgrade_row(
        "the same, of the requests on a connection already open, ms",
        |u| u.p99_after_reused_ms,
    );
    upgrade_row("slowest request of that second, ms", |u| u.max_after_ms);
    upgrade_row(
        "reconnects/s at the new generation (client connects in its first second)",
        |u| u.reconnects_per_s,
    );
    row(
        "reconnects after SIGUSR2, ms: first / median / 99th % (medians)",
        &|i, r| {
            let at = |k: usize| num(median_max(r, |u| u.reconnect_ms[k]).0);
            baton_only(i, format!("{} / {} / {}", at(0), at(1), at(2)))
        },
    );
    upgrade_row(
        "listen-queue overflows per upgrade (kernel counter, whole netns)",
        |u| u.listen.map_or(f64::NAN, |l| l.overflows as f64),
    );
    row("upgrades measured", &|i, r| {
        baton_only(i, upgrades(r).len().to_string())
    });
    row("failed requests after the warm-up (by kind)", &|_, r| {
        failures_text(&failures(r))
    });
    row("failed requests during the warm-up", &|_, r| {
        r.iter().map(|x| x.warmup_failed).sum::<u64>().to_string()
    });

    print_targets(count, contenders, runs);
    for (contender, runs) in contenders.iter().zip(runs) {
        let handovers: Vec<Handover> = upgrades(runs)
            .into_iter()
            .map(|u| u.handover.clone())
            .collect();
        if !handovers.is_empty() {
            print_steps(
                &format!("{}, under loadgen at {count} connections", contender.name),
                &handovers,
            );
        }
    }
}

/// Issue 17's targets for each baton build, against bare axum in the same rounds.
fn print_targets(count: usize, contenders: &[Contender], runs: &[Vec<RunFigures>]) {
    let bare = contenders.iter().position(Contender::is_bare);
    let bare_p99 =
        |p99: fn(&RunFigures) -> f64| bare.map_or(f64::NAN, |i| median_of(&runs[i], p99));
    let (bare_wrk, bare_load) = (bare_p99(|x| x.wrk.p99_ms), bare_p99(|x| x.p99_ms));
    let batons: Vec<usize> = (0..contenders.len())
        .filter(|i| contenders[*i].is_baton())
        .collect();
    let names: Vec<&str> = batons
        .iter()
        .map(|i| contenders[*i].name.as_str())
        .collect();
    println!(
        "\n| target (issue 17), {count} connections | {} |",
        names.join(" | ")
    );
    println!("| --- |{}", " --- |".repeat(batons.len()));
    let row = |label: &str, cell: &dyn Fn(&[RunFigures]) -> String| {
        let cells: Vec<String> = batons.iter().map(|i| cell(&runs[*i])).collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    row("0 failed requests (loadgen, steady and upgrades)", &|r| {
        let failed: u64 = failures(r).values().sum();
        format!("{failed}: {}", met(failed == 0))
    });
    row(
        "steady p99 ≤ 1.2 × bare axum's (wrk; loadgen's ratio aside)",
        &|r| {
            let ratio = median_of(r, |x| x.wrk.p99_ms) / bare_wrk;
            let other = median_of(r, |x| x.p99_ms) / bare_load;
            format!("{ratio:.2} ×: {} ({other:.2} ×)", met(ratio <= 1.2))
        },
    );
    row(
        "p99 in the second after SIGUSR2 ≤ 2 × steady p99 (loadgen, same run)",
        &|r| {
            let after = median_max(r, |u| u.p99_after_ms).0;
            let ratio = after / median_of(r, |x| x.p99_ms);
            format!("{ratio:.1} ×: {}", met(ratio <= 2.0))
        },
    );
    row("handover median ≤ 50 ms", &|r| {
        let handover = median_max(r, |u| u.handover.served_ms).0;
        format!("{} ms: {}", num(handover), met(handover <= 50.0))
    });
}
