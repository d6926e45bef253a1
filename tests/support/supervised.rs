//! Supervised mode: `bin/baton serve --supervise` is the process the harness starts (its pid
//! is [`Server::supervisor_pid`] and stays the pid file's), and the worker it runs is the one
//! the state file names. The same [`Server`], so the same clean-up: the supervisor, every worker
//! and anything a broken build started run in the deployment directory and die with it.

use std::path::PathBuf;

use baton::lifecycle::SupervisorRecord;

use super::server::{Config, Server};

/// A worker, as the supervisor record and the worker's state file name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worker {
    pub pid: u32,
    /// With the pid, names one process.
    pub start_ticks: u64,
    pub generation: u64,
}

impl Server {
    /// Prepares a deployment directory and starts `bin/baton serve --supervise` in it; returns
    /// once the supervisor names a serving worker and the pid file names the supervisor.
    pub fn start_supervised(config: &Config) -> Server {
        let mut server = Server::prepare(config);
        server.spawn_supervised();
        server
    }

    /// [`Server::start_supervised`] in a deployment directory already prepared.
    pub fn spawn_supervised(&mut self) {
        let server = self;
        let pid = server.spawn_process(&["serve", "--supervise"], |_| {});
        let worker = server.wait_for_worker("the first worker", |_| true);
        let record = server
            .record()
            .filter(|r| r.pid == worker.pid)
            .expect("the worker's state file");
        server.adopt_addresses(&record);
        assert_eq!(
            server.read_pid_file(),
            Some(pid),
            "the pid file names the supervisor"
        );
    }

    /// The supervisor: the process the harness started.
    pub fn supervisor_pid(&self) -> u32 {
        self.first_pid()
    }

    /// `run/baton.supervisor.json`.
    pub fn supervisor_path(&self) -> PathBuf {
        self.root().join("run/baton.supervisor.json")
    }

    /// The supervisor record, if readable.
    pub fn supervisor_record(&self) -> Option<SupervisorRecord> {
        SupervisorRecord::read(&self.supervisor_path())
    }

    /// Waits until the supervisor names a serving worker that `accept` takes, and that
    /// worker's state file is written. Fails at once if the supervisor exits.
    pub fn wait_for_worker(&self, what: &str, accept: impl Fn(&Worker) -> bool) -> Worker {
        let supervisor = self.supervisor_pid();
        self.wait_while_up(what, || {
            let record = self.supervisor_record().filter(|r| r.pid == supervisor)?;
            let state = self.record().filter(|s| Some(s.pid) == record.worker_pid)?;
            let worker = Worker {
                pid: state.pid,
                start_ticks: state.start_ticks,
                generation: state.generation,
            };
            accept(&worker).then_some(worker)
        })
    }
}
