//! Telling systemd how the daemon is doing (`Type=notify` units): `READY=1` once every store
//! has been read and every resource synced, `STATUS=` lines, `WATCHDOG=1` pings when the unit
//! sets `WatchdogSec`, and `STOPPING=1` on shutdown.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing. The socket may be a path
//! or, as `sd_notify(3)` allows, an abstract socket name starting with `@` (container
//! managers hand those out).

use std::ffi::OsStr;
use std::fmt::Write;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
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
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let mut message = String::new();
    for state in states {
        // Writing to a String cannot fail.
        let _ = writeln!(message, "{state}");
    }
    if let Err(e) = send_to(&socket, &message) {
        tracing::debug!("cannot notify the service manager: {e}");
    }
}

/// Sends `message` in one datagram to `socket`: a path, or an abstract name after `@`.
fn send_to(socket: &OsStr, message: &str) -> std::io::Result<()> {
    let address = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let sent = UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &address)?;
    if sent == message.len() {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "the notification was cut short",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_an_abstract_socket_and_a_path() {
        let name = format!("reconfd-notify-test-{}", std::process::id());
        let abstract_socket =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).expect("a name"))
                .expect("bind");
        send_to(OsStr::new(&format!("@{name}")), "READY=1\n").expect("sent");
        let mut buffer = [0u8; 64];
        let length = abstract_socket.recv(&mut buffer).expect("received");
        assert_eq!(&buffer[..length], b"READY=1\n");

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let path_socket = UnixDatagram::bind(&path).expect("bind");
        send_to(path.as_os_str(), "STOPPING=1\n").expect("sent");
        let length = path_socket.recv(&mut buffer).expect("received");
        assert_eq!(&buffer[..length], b"STOPPING=1\n");
    }

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
