//! Exec mode: reconfd as a container's entrypoint, running the service as its child.
//!
//! The service starts once every resource has had its first full sync and every destination
//! exists (the process holds the start until then), through `sh` as
//! `exec COMMAND`, so that the service itself, not a shell, is reconfd's child and gets its
//! signals. It runs as commands do ([`crate::command::shell`]): in a process group of its own,
//! without the credentials `--command-env` does not name, with the open files limit reconfd
//! started with. A sync that swapped a file sends it `reload_signal` (after a random delay up to
//! `splay`); SIGUSR1, SIGUSR2, SIGQUIT and SIGWINCH sent to reconfd are passed on to it; when
//! reconfd is told to stop it sends `kill_signal`, and SIGKILL to its process group after
//! `kill_timeout`. reconfd exits with the service's status.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

use crate::command::{self, CommandEnv};
use crate::controller::{now, sleep_until};
use crate::reaper::{self, OwnChild};

/// Sent to the service after a sync that swapped a file, unless `reload_signal` says otherwise.
pub const DEFAULT_RELOAD_SIGNAL: Signal = Signal::SIGHUP;
/// Sent to the service when reconfd stops, unless `kill_signal` says otherwise.
pub const DEFAULT_KILL_SIGNAL: Signal = Signal::SIGTERM;
/// How long the service may take to exit after `kill_signal`, unless `kill_timeout` says
/// otherwise.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// Signals reconfd passes on to the service as they are. SIGHUP keeps its meaning for reconfd
/// (read the settings again), SIGTERM and SIGINT stop the service with `kill_signal`.
const FORWARDED: [Signal; 4] = [
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGQUIT,
    Signal::SIGWINCH,
];

/// The exec mode's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exec {
    /// The service's command line.
    pub command: String,
    /// Sent to the service after a sync that swapped a file.
    pub reload_signal: Signal,
    /// Sent to the service when reconfd stops.
    pub kill_signal: Signal,
    /// How long the service may take to exit after `kill_signal`, before SIGKILL.
    pub kill_timeout: Duration,
    /// The longest random delay before a reload signal, so that the services of many hosts
    /// fed by one store do not all reload at once.
    pub splay: Duration,
}

/// The signal called `name`: `SIGUSR2`, `USR2` or `usr2`.
pub(crate) fn signal_named(name: &str) -> Result<Signal, String> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse()
        .map_err(|_| format!("`{name}` is not a signal name such as \"SIGHUP\""))
}

/// Where the controllers tell the service that a sync swapped a file. It holds one
/// notification at most, so swaps made while a reload signal is pending give no more signals.
#[derive(Clone, Debug, Default)]
pub(crate) struct Swaps(Arc<Notify>);

impl Swaps {
    /// A sync swapped a file (and its resource's reload command, if any, has run).
    pub(crate) fn swapped(&self) {
        self.0.notify_one();
    }

    /// Takes the notification of a swap, if there is one.
    #[cfg(test)]
    pub(crate) fn take(&self) -> bool {
        self.0.notified().now_or_never().is_some()
    }
}

/// The next swap told to `swaps`; never without them.
pub(crate) async fn next_swap(swaps: Option<&Swaps>) {
    match swaps {
        Some(swaps) => swaps.0.notified().await,
        None => std::future::pending().await,
    }
}

/// The service, before and while it runs.
pub(crate) struct Service {
    exec: Exec,
    env: CommandEnv,
    swaps: Swaps,
    forwarded: Vec<(Signal, tokio::signal::unix::Signal)>,
    running: Option<Running>,
}

/// The running service.
struct Running {
    child: OwnChild,
    pid: Pid,
    /// When the pending reload signal is due.
    reload_at: Option<Instant>,
}

impl Service {
    /// The service of `exec`, not started yet; it gets the credentials `env` passes on.
    /// Listens for the signals to pass on from now, so that none is lost.
    pub(crate) fn new(exec: Exec, env: CommandEnv) -> io::Result<Service> {
        let forwarded = FORWARDED
            .into_iter()
            .map(|sig| Ok((sig, signal(SignalKind::from_raw(sig as i32))?)))
            .collect::<io::Result<_>>()?;
        Ok(Service {
            exec,
            env,
            swaps: Swaps::default(),
            forwarded,
            running: None,
        })
    }

    /// Where the controllers tell it about swaps.
    pub(crate) fn swaps(&self) -> Swaps {
        self.swaps.clone()
    }

    /// Whether it has been started.
    pub(crate) fn started(&self) -> bool {
        self.running.is_some()
    }

    /// Starts the service. The files it reads are in place: swaps made before are no reason
    /// to reload it.
    pub(crate) fn start(&mut self) -> Result<(), String> {
        // Takes the stored notification, if any.
        let _ = self.swaps.0.notified().now_or_never();
        let command = &self.exec.command;
        // Written by the user as `exec ...` already, it must not become `exec exec ...`.
        let script = match command.trim_start().strip_prefix("exec") {
            Some(rest) if rest.starts_with(char::is_whitespace) => command.clone(),
            _ => format!("exec {command}"),
        };
        let mut shell = command::shell(&script, self.env);
        shell
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        let child = reaper::spawn(&mut shell)
            .map_err(|e| format!("exec: `{command}` could not be started: {e}"))?;
        let pid = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw)
            // A child just spawned has not been waited for, so tokio still knows its ID.
            .ok_or_else(|| format!("exec: `{command}` exited before it could be followed"))?;
        tracing::info!("exec: started `{command}` (pid {pid})");
        self.running = Some(Running {
            child,
            pid,
            reload_at: None,
        });
        Ok(())
    }

    /// Follows the running service until it exits, and returns how it exited; never returns
    /// before it was started. Meanwhile sends it the reload signal after each sync that
    /// swapped a file, and passes signals on. Cancel-safe: a reload signal due is kept.
    pub(crate) async fn exited(&mut self) -> io::Result<ExitStatus> {
        let Some(running) = &mut self.running else {
            return std::future::pending().await;
        };
        loop {
            let reload_at = running.reload_at;
            tokio::select! {
                status = running.child.wait() => return status,
                // Swaps made while a signal is pending are covered by it: it goes after them.
                () = self.swaps.0.notified() => {
                    if reload_at.is_some() {
                        continue;
                    }
                    let delay = self.exec.splay.mul_f64(fastrand::f64());
                    running.reload_at = Some(now() + delay);
                    if !delay.is_zero() {
                        tracing::info!(
                            "exec: a file was swapped; {} in {delay:.1?}",
                            self.exec.reload_signal
                        );
                    }
                }
                () = sleep_until(reload_at), if reload_at.is_some() => {
                    running.reload_at = None;
                    running.send(self.exec.reload_signal, "a file was swapped");
                }
                signal = next_signal(&mut self.forwarded) => {
                    running.send(signal, "passed on");
                }
            }
        }
    }

    /// Stops the service: `kill_signal`, then SIGKILL to its process group if it is still
    /// running after `kill_timeout`. Returns how it exited; `None` if it never started.
    pub(crate) async fn stop(self) -> Option<io::Result<ExitStatus>> {
        let mut running = self.running?;
        let timeout = self.exec.kill_timeout;
        running.send(
            self.exec.kill_signal,
            &format!(
                "stopping; SIGKILL in {}",
                humantime::format_duration(timeout)
            ),
        );
        match tokio::time::timeout(timeout, running.child.wait()).await {
            Ok(status) => Some(status),
            Err(_) => {
                tracing::warn!(
                    "exec: the service did not exit within {} of {}: killing its process group",
                    humantime::format_duration(timeout),
                    self.exec.kill_signal
                );
                // The group may be gone already, its leader a zombie; there is nothing more
                // to do then.
                let _ = killpg(running.pid, Signal::SIGKILL);
                Some(running.child.wait().await)
            }
        }
    }
}

impl Running {
    /// Sends `signal` to the service, saying `why` in the log.
    fn send(&self, signal: Signal, why: &str) {
        match kill(self.pid, signal) {
            Ok(()) => tracing::info!(
                "exec: sent {signal} to the service (pid {}): {why}",
                self.pid
            ),
            Err(e) => tracing::warn!(
                "exec: cannot send {signal} to the service (pid {}): {e}",
                self.pid
            ),
        }
    }
}

/// The next of `listeners`' signals to arrive.
async fn next_signal(listeners: &mut [(Signal, tokio::signal::unix::Signal)]) -> Signal {
    std::future::poll_fn(|context| {
        for (signal, listener) in listeners.iter_mut() {
            // A listener never ends while the runtime runs.
            if let Poll::Ready(Some(())) = listener.poll_recv(context) {
                return Poll::Ready(*signal);
            }
        }
        Poll::Pending
    })
    .await
}

/// The exit status reconfd gives for the service's `status`: its exit code, or 128 plus the
/// number of the signal that killed it, as a shell does.
pub(crate) fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

/// How the service exited, for the log.
pub(crate) fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal().map(Signal::try_from)) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(Ok(signal))) => {
            format!("was killed by {signal} (exit status {})", exit_code(status))
        }
        _ => format!("ended ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn signals_are_named_with_or_without_sig_in_any_case() {
        assert_eq!(signal_named("SIGUSR2"), Ok(Signal::SIGUSR2));
        assert_eq!(signal_named("usr2"), Ok(Signal::SIGUSR2));
        assert_eq!(signal_named(" Hup "), Ok(Signal::SIGHUP));
        assert_eq!(
            signal_named("SIGFOO"),
            Err("`SIGFOO` is not a signal name such as \"SIGHUP\"".to_string())
        );
        assert!(signal_named("").is_err());
    }

    #[test]
    fn the_exit_status_is_the_services_code_or_128_plus_its_signal() {
        // Raw wait statuses: the code in the second byte, or the signal in the first.
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(Signal::SIGKILL as i32)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(Signal::SIGTERM as i32)), 143);
        assert_eq!(
            describe(ExitStatus::from_raw(Signal::SIGTERM as i32)),
            "was killed by SIGTERM (exit status 143)"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(7 << 8)),
            "exited with status 7"
        );
    }
}
