//! The sending end of a watch, as every store's watch task uses it, and the liveness probes of
//! watches that hold a connection open.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, Interval};

use super::{Change, Snapshot, StoreError, WatchEvent, WatchStream};

/// Watch events buffered for the daemon. The daemon applies whatever is queued before it
/// renders, so the buffer only needs to absorb a burst; a full one holds the store's task back
/// until the daemon catches up.
const WATCH_CAPACITY: usize = 256;

/// How often a watch asks its node whether it still answers: a node that vanished without
/// closing the connection, or that accepts connections but no longer serves, would otherwise
/// hold the watch silently.
const PROBE_INTERVAL: Duration = Duration::from_secs(20);

/// How long a probe waits; a node that serves answers it in about a millisecond.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A new watch: the sender for the store's watch task, and the stream for the daemon.
pub(crate) fn channel() -> (WatchSender, WatchStream) {
    let (events, stream) = mpsc::channel(WATCH_CAPACITY);
    (WatchSender { events }, stream)
}

/// A new watch whose stream starts with `snapshot` as a [`WatchEvent::Replace`]: a full read
/// made as the watch opened, which the events that follow build on.
pub(crate) fn channel_replacing(snapshot: Snapshot) -> (WatchSender, WatchStream) {
    let (sender, stream) = channel();
    // The channel is new, so it has room for this event, and its receiver is here.
    let _ = sender.events.try_send(Ok(WatchEvent::Replace(snapshot)));
    (sender, stream)
}

/// Queues a watch's events for the daemon. Each method returns false once the daemon stopped
/// listening (it dropped the stream): the watch task then ends. Dropping every sender ends the
/// stream, and the daemon opens a new watch.
#[derive(Clone)]
pub(crate) struct WatchSender {
    events: mpsc::Sender<Result<WatchEvent, StoreError>>,
}

impl WatchSender {
    /// Queues `changes`, made at `revision` where the store has revisions. No changes queue
    /// nothing.
    pub(crate) async fn changes(&self, revision: Option<i64>, changes: Vec<Change>) -> bool {
        if changes.is_empty() {
            return !self.events.is_closed();
        }
        let event = WatchEvent::Changes { revision, changes };
        self.events.send(Ok(event)).await.is_ok()
    }

    /// Queues `snapshot` as a replacement of everything the daemon holds.
    pub(crate) async fn replace(&self, snapshot: Snapshot) -> bool {
        self.events
            .send(Ok(WatchEvent::Replace(snapshot)))
            .await
            .is_ok()
    }

    /// Queues `error`: the daemon logs it and, once the stream ends, watches again.
    pub(crate) async fn fail(&self, error: StoreError) -> bool {
        self.events.send(Err(error)).await.is_ok()
    }

    /// Returns once the daemon stopped listening.
    pub(crate) async fn closed(&self) {
        self.events.closed().await;
    }
}

/// When a watch probes its node: every [`PROBE_INTERVAL`], the first one interval after the
/// watch opened.
pub(crate) struct Probes {
    schedule: Interval,
}

impl Probes {
    /// The probes of a watch opening now.
    pub(crate) fn new() -> Probes {
        Probes {
            schedule: tokio::time::interval_at(Instant::now() + PROBE_INTERVAL, PROBE_INTERVAL),
        }
    }

    /// Returns when the next probe is due. Cancel-safe, for a `select!` beside the stream.
    pub(crate) async fn due(&mut self) {
        self.schedule.tick().await;
    }

    /// Runs `probe` of `node` within [`PROBE_TIMEOUT`]; the reason to leave the node when it
    /// fails or does not answer in time.
    pub(crate) async fn check<T, E: std::fmt::Display>(
        node: impl std::fmt::Display,
        probe: impl Future<Output = Result<T, E>>,
    ) -> Result<(), String> {
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("{node} stopped answering: {error}")),
            Err(_) => Err(format!("{node} did not answer within {PROBE_TIMEOUT:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replacement_comes_first_and_no_changes_send_nothing() {
        let (events, mut stream) = channel_replacing(Snapshot::default());
        assert!(events.changes(Some(3), Vec::new()).await);
        let change = Change::Delete { key: "/a".into() };
        assert!(events.changes(Some(4), vec![change.clone()]).await);
        assert!(events.fail(StoreError::unreachable("gone")).await);
        drop(events);
        assert_eq!(
            stream.recv().await.expect("an event").expect("no error"),
            WatchEvent::Replace(Snapshot::default())
        );
        assert_eq!(
            stream.recv().await.expect("an event").expect("no error"),
            WatchEvent::Changes {
                revision: Some(4),
                changes: vec![change]
            }
        );
        assert!(stream.recv().await.expect("an event").is_err());
        assert!(
            stream.recv().await.is_none(),
            "the stream ends with its senders"
        );
    }

    #[tokio::test]
    async fn a_stream_dropped_is_seen_by_every_send() {
        let (events, stream) = channel();
        drop(stream);
        events.closed().await;
        assert!(!events.changes(None, Vec::new()).await);
        assert!(
            !events
                .changes(None, vec![Change::Delete { key: "/a".into() }])
                .await
        );
        assert!(!events.replace(Snapshot::default()).await);
        assert!(!events.fail(StoreError::unreachable("gone")).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_fails_on_an_error_or_no_answer() {
        let answered = Probes::check("n1", async { Ok::<_, String>(()) }).await;
        assert_eq!(answered, Ok(()));
        let failed = Probes::check("n1", async { Err::<(), _>("refused") }).await;
        assert_eq!(failed, Err("n1 stopped answering: refused".to_string()));
        let silent = Probes::check("n1", std::future::pending::<Result<(), String>>()).await;
        assert_eq!(silent, Err("n1 did not answer within 5s".to_string()));
    }
}
