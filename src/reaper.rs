//! Reaping orphans. As a container's PID 1, or as the child subreaper that exec mode makes it,
//! reconfd inherits every process whose parent exits before it (a service's double-forked
//! helpers, what a reload command left in the background); nothing else waits for them, so
//! each would stay a zombie, holding its process ID, unless reconfd waits for it.
//!
//! reconfd's own children (commands and the exec mode's service) are waited for by
//! tokio's `Child`, which needs their exit status: a plain `waitpid(-1)` loop would take it
//! first, and the command would fail with "no child processes". So every child reconfd
//! starts is spawned through [`spawn`], which records its ID until tokio has waited for it,
//! and the reaper only ever reaps the others. It looks before it reaps: `waitid(P_ALL,
//! WNOWAIT)` names an exited child without reaping it, and only a child that is not recorded
//! is then reaped, by its ID. When the child named is one of reconfd's own, the reaper stops
//! there, since `waitid` would keep naming it; tokio reaps it on the same SIGCHLD, and the
//! reaper looks again as soon as the child is released ([`OwnChild::wait`]). Recording a
//! spawn and reaping hold one lock, so a child that exits at once is never taken for an
//! orphan before it is recorded.

use std::collections::BTreeSet;
use std::io;
use std::process::ExitStatus;
use std::sync::{LazyLock, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

/// The IDs of the children tokio waits for, which the reaper leaves alone.
static OWN: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Told when an own child has been waited for, which may unblock the reaper (see the module
/// documentation).
static RELEASED: LazyLock<Notify> = LazyLock::new(Notify::new);

fn own() -> MutexGuard<'static, BTreeSet<i32>> {
    // The set stays consistent whatever panicked while holding it: each step is one insert
    // or remove.
    OWN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A child reconfd started and waits for itself; the reaper leaves it alone until it has been
/// waited for or dropped.
pub(crate) struct OwnChild {
    child: Child,
    /// Its ID while it is recorded.
    pid: Option<i32>,
}

/// Starts `command` as one of reconfd's own children.
pub(crate) fn spawn(command: &mut Command) -> io::Result<OwnChild> {
    let mut own = own();
    let child = command.spawn()?;
    let pid = child.id().and_then(|pid| i32::try_from(pid).ok());
    if let Some(pid) = pid {
        own.insert(pid);
    }
    Ok(OwnChild { child, pid })
}

impl OwnChild {
    /// Its process ID, until it has been waited for.
    pub(crate) fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Its standard output and error, when they are piped.
    pub(crate) fn take_output(&mut self) -> (Option<ChildStdout>, Option<ChildStderr>) {
        (self.child.stdout.take(), self.child.stderr.take())
    }

    /// Waits for it to exit (cancel-safe, as tokio's `Child::wait`).
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait().await;
        self.release();
        status
    }

    /// Lets the reaper have it: once waited for, or dropped (tokio then reaps it in the
    /// background, and does not mind should the reaper do so first).
    fn release(&mut self) {
        if let Some(pid) = self.pid.take() {
            own().remove(&pid);
            RELEASED.notify_one();
        }
    }
}

impl Drop for OwnChild {
    fn drop(&mut self) {
        self.release();
    }
}

/// Starts reaping orphans on the runtime, on every SIGCHLD, for the rest of the process.
/// `subreaper`: become the child subreaper first, so that orphans of reconfd's descendants
/// come to reconfd rather than to the host's init (PID 1 reaps them anyway).
pub(crate) fn start(subreaper: bool) -> io::Result<()> {
    if subreaper {
        nix::sys::prctl::set_child_subreaper(true)?;
    }
    let mut exited = signal(SignalKind::child())?;
    tokio::spawn(async move {
        loop {
            reap_orphans();
            tokio::select! {
                _ = exited.recv() => {}
                () = RELEASED.notified() => {}
            }
        }
    });
    Ok(())
}

/// Reaps every exited child that is not one of reconfd's own, up to the first that is.
fn reap_orphans() {
    let own = own();
    loop {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        let pid = match waitid(Id::All, flags) {
            Ok(status) => match status.pid() {
                Some(pid) => pid,
                None => return,
            },
            Err(Errno::EINTR) => continue,
            // No children at all.
            Err(Errno::ECHILD) => return,
            Err(e) => {
                tracing::warn!("cannot look for exited processes to reap: {e}");
                return;
            }
        };
        if own.contains(&pid.as_raw()) {
            return;
        }
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => tracing::debug!("reaped orphan {pid}: {}", described(status)),
            Err(e) => {
                tracing::warn!("cannot reap orphan {pid}: {e}");
                return;
            }
        }
    }
}

/// How a reaped process ended, for the log.
fn described(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("killed by {signal}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use nix::unistd::Pid;

    use super::*;

    /// Waits until `pid`, a child of this process, has exited, without reaping it.
    fn exited(pid: Pid) {
        waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT).expect("waitid");
    }

    /// Whether `pid` is still a child of this process to be reaped.
    fn unreaped(pid: Pid) -> bool {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        waitid(Id::Pid(pid), flags).is_ok()
    }

    #[tokio::test]
    async fn orphans_are_reaped_and_own_children_left_to_their_waiter() {
        // Started outside `spawn`, as an orphan that came to the process would be.
        let mut stranger_child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 4"])
            .spawn()
            .expect("spawn");
        let stranger = Pid::from_raw(i32::try_from(stranger_child.id()).expect("pid"));
        let mut mine = spawn(Command::new("/bin/sh").args(["-c", "exit 3"])).expect("spawn");
        let mine_pid = Pid::from_raw(mine.pid.expect("recorded"));
        exited(stranger);
        exited(mine_pid);
        // Other tests' own children, exited and not waited for yet, may hold the reaper up
        // for a moment.
        let deadline = Instant::now() + Duration::from_secs(30);
        while unreaped(stranger) && Instant::now() < deadline {
            reap_orphans();
            std::thread::yield_now();
        }
        assert!(!unreaped(stranger), "the orphan was reaped");
        assert!(
            stranger_child.try_wait().is_err(),
            "its status is gone to the reaper"
        );
        assert!(unreaped(mine_pid), "the own child was left");
        let status = mine.wait().await.expect("its status is still there");
        assert_eq!(status.code(), Some(3));
        assert!(
            !own().contains(&mine_pid.as_raw()),
            "released once waited for"
        );
    }
}
