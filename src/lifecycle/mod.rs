//! The process lifecycle: signals, listeners, binary upgrade, drain, pid file, control client.
//! (Being written.)

mod state;

pub use state::{ListenerInfo, Phase, ProcessState, UpgradeRecord};
