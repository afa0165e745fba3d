//! The process's limit on open files (`RLIMIT_NOFILE`).
//!
//! The soft limit most services start with (1,024 under systemd) is kept low for programs
//! that still use `select(2)`, which cannot watch a descriptor past 1,023; reconfd does not use
//! it, and a daemon holding store connections, watched data files, stage files and the pipes
//! of its commands should not fail at a limit the system lets it raise. So it raises the soft
//! limit to the hard one at start, as the Go runtime does for confd.

use std::sync::OnceLock;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The soft limit reconfd started with, where it raised it: what its commands get back.
static STARTING_SOFT_LIMIT: OnceLock<u64> = OnceLock::new();

/// The soft limit to give back to a command, when reconfd raised its own: a service a reload
/// command starts (`haproxy -D`) gets the limit it would have had without reconfd, as Go
/// gives it back to confd's commands.
pub(crate) fn starting_soft_limit() -> Option<u64> {
    STARTING_SOFT_LIMIT.get().copied()
}

/// The soft limit assumed when the limits cannot be read: Linux's usual default.
const USUAL_SOFT_LIMIT: u64 = 1024;

/// Raises the soft limit on open files to the hard limit and returns the soft limit now in
/// force. A failure leaves the limit as it was, with a warning: reconfd works within it.
pub(crate) fn raise_open_files_limit() -> u64 {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!("cannot read the limit on open files: {e}");
            return USUAL_SOFT_LIMIT;
        }
    };
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            let _ = STARTING_SOFT_LIMIT.set(soft);
            tracing::debug!("limit on open files raised from {soft} to {hard}");
            hard
        }
        Err(e) => {
            tracing::warn!("cannot raise the limit on open files from {soft} to {hard}: {e}");
            soft
        }
    }
}
