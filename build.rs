//! Records the git commit the binary is built from, so `/` and `/-/status` identify the build.
//! A packager without `.git` (a container build) can pass `BATON_GIT_COMMIT` instead. Also
//! rebuilds when a migration is added.

use std::process::Command;

fn main() {
    let commit = std::env::var("BATON_GIT_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BATON_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=BATON_GIT_COMMIT");
    // `sqlx::migrate!` embeds migrations/; a new file there must rebuild the binary.
    println!("cargo:rerun-if-changed=migrations");
    // A commit moves the branch ref (loose or packed), not HEAD itself. Only the files that
    // exist: cargo counts a missing one as changed, and would rebuild the crate on every
    // command (a clone without packed refs, a copy without .git).
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
