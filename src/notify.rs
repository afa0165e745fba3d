//! Telling systemd how the daemon is doing (`Type=notify` units): `READY=1` once every store
//! has been read and every resource synced, `STATUS=` lines, `WATCHDOG=1` pings when the unit
//! sets `WatchdogSec`, and `STOPPING=1` on shutdown.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::limits;
use crate::secrets;

/// Reports that the first full sync is done, with a one-line summary.
pub fn ready(summary: &str) {
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&secrets::mask(summary)),
    ]);
}

/// Replaces the status line `systemctl status` shows.
pub fn status(summary: &str) {
    send(&[NotifyState::Status(&secrets::mask(summary))]);
}

/// Reports that the daemon is reading its settings again; `ready` ends it.
pub fn reloading() {
    send(&[
        NotifyState::Reloading,
        NotifyState::Status("reading the settings again"),
    ]);
}

/// Reports that the daemon is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Starts the watchdog pings when the unit asks for them (`WatchdogSec=`), at half its
/// interval. The pings run on the same thread as everything else, so a loop that blocks the
/// thread stops them and systemd restarts the daemon.
pub fn start_watchdog() {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(ping_period(interval));
        loop {
            ticks.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}

/// Half the watchdog `interval`, and at most [`limits::DURATION`]: tokio's interval adds its
/// period to the clock unchecked, so a huge `WATCHDOG_USEC` would panic the pinging task;
/// pinging more often than asked does no harm.
fn ping_period(interval: Duration) -> Duration {
    (interval / 2).min(limits::DURATION.max())
}

/// The watchdog interval systemd asks for, as `sd_watchdog_enabled(3)` reads it:
/// `WATCHDOG_USEC`, unless `WATCHDOG_PID` names another process. (sd-notify's own check also
/// insists on `WATCHDOG_PID` being set, which systemd does not require.)
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_another_process = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| pid != std::process::id());
    (usec > 0 && !for_another_process).then(|| Duration::from_micros(usec))
}

/// Sends `states` to the service manager; failing to reach it is worth a debug line only, as
/// the daemon works the same without it.
fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("cannot notify the service manager: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_come_at_half_the_watchdog_interval_and_at_least_yearly() {
        assert_eq!(
            ping_period(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
        assert_eq!(
            ping_period(Duration::from_micros(u64::MAX)),
            limits::DURATION.max()
        );
    }
}
