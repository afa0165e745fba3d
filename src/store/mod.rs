//! Key/value stores behind one small interface.
//!
//! Every store answers two questions: "what are all the keys under these prefixes right now"
//! ([`Store::fetch`], a [`Snapshot`]) and, where the store can tell, "what changed since then"
//! ([`Store::watch`], a stream of [`WatchEvent`]s). The daemon keeps one snapshot per store and
//! applies watch events to it incrementally; the renderers only ever read snapshots.

pub mod backend;
pub mod consul;
pub mod env;
pub mod etcd;
pub mod file;
pub mod http;
pub mod lease;
#[cfg(test)]
pub(crate) mod memory;
pub mod nats;
pub(crate) mod nodes;
pub(crate) mod progress;
pub mod redis;
#[cfg(test)]
#[path = "../../tests/common/certificates.rs"]
pub(crate) mod test_certificates;
pub mod tls;
pub mod vault;
pub(crate) mod watch;
pub mod zookeeper;

use std::collections::BTreeMap;
use std::ops::Bound;

use async_trait::async_trait;
use tokio::sync::mpsc;

/// Keys (absolute, `/`-separated paths) and their values, sorted by key.
pub type KeyMap = BTreeMap<String, String>;

/// A consistent view of a store's keys under a set of prefixes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The keys and values.
    pub entries: KeyMap,
    /// The store's revision this snapshot was read at, where the store has one (etcd): it
    /// holds every change up to it. Watch changes applied later do not move it.
    pub revision: Option<i64>,
}

impl Snapshot {
    /// How many keys lie under any of `prefixes` (each key counted once), counting no further
    /// than `enough`.
    pub fn count_under(&self, prefixes: &[String], enough: usize) -> usize {
        let mut sorted: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        let mut counted: Vec<&str> = Vec::new();
        let mut count = 0;
        for prefix in sorted {
            // A prefix under one already counted holds no key of its own.
            if count >= enough || counted.iter().any(|outer| prefix.starts_with(outer)) {
                continue;
            }
            count += self
                .entries
                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(key, _)| under_prefix(key, prefix))
                .take(enough - count)
                .count();
            counted.push(prefix);
        }
        count
    }

    /// Applies one change in place.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Put { key, value } => {
                self.entries.insert(key, value);
            }
            Change::Delete { key } => {
                self.entries.remove(&key);
            }
        }
    }
}

/// One change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The key was created or its value replaced.
    Put {
        /// Absolute key.
        key: String,
        /// New value.
        value: String,
    },
    /// The key was removed.
    Delete {
        /// Absolute key.
        key: String,
    },
}

impl Change {
    /// The key this change touches.
    pub fn key(&self) -> &str {
        match self {
            Change::Put { key, .. } | Change::Delete { key } => key,
        }
    }
}

/// What a store's watch stream reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// Changes to individual keys, in the order the store made them.
    Changes {
        /// The store revision that made these changes, where the store has one; changes at
        /// or below the snapshot's read revision are already in it and are skipped.
        revision: Option<i64>,
        /// The changes.
        changes: Vec<Change>,
    },
    /// The store could not say what changed and read everything again (the file store after a
    /// data file changed; a network store after its history was compacted).
    Replace(Snapshot),
}

/// The receiving end of a watch: events until the store fails or the stream ends.
pub type WatchStream = mpsc::Receiver<Result<WatchEvent, StoreError>>;

/// Why a store could not answer: what kind of failure it was, and a message naming the store
/// and, where there are several, the node.
///
/// The kind, not the message, decides how soon the daemon asks again: a store that cannot be
/// reached is likely back within seconds, while one that refuses the credentials or the
/// request goes on refusing until someone changes the store or the settings.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

/// What kind of failure a [`StoreError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// The store could not be reached or could not serve: no connection, a timeout, a
    /// connection lost, an HTTP 5xx or an "unavailable" answer, or an answer that is not the
    /// store's (a proxy's error page).
    Unreachable,
    /// The store answered and refused the request for a reason other than credentials: an
    /// HTTP 4xx other than 401 and 403, a bucket or mount that does not exist, a command or
    /// feature the server lacks.
    Rejected,
    /// The store refused the credentials or what they may do: HTTP 401 and 403, Redis
    /// `NOAUTH`, `WRONGPASS` and `NOPERM`, ZooKeeper's `AuthFailed` and `NoAuth`, a NATS
    /// authorization or permissions violation.
    Auth,
    /// The store's settings cannot work, such as an invalid file filter.
    Invalid,
    /// A data file could not be read or parsed.
    File,
}

impl StoreErrorKind {
    /// The kind's name, as in logs: `unreachable`, `rejected`, `auth`, `invalid`, `file`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreErrorKind::Unreachable => "unreachable",
            StoreErrorKind::Rejected => "rejected",
            StoreErrorKind::Auth => "auth",
            StoreErrorKind::Invalid => "invalid",
            StoreErrorKind::File => "file",
        }
    }
}

impl std::fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StoreError {
    /// A failure of `kind`, told by `message`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            message: message.into(),
        }
    }

    /// The store could not be reached or could not serve.
    pub fn unreachable(message: impl Into<String>) -> StoreError {
        StoreError::new(StoreErrorKind::Unreachable, message)
    }

    /// The store refused the request for a reason other than credentials.
    pub fn rejected(message: impl Into<String>) -> StoreError {
        StoreError::new(StoreErrorKind::Rejected, message)
    }

    /// The store refused the credentials or what they may do.
    pub fn auth(message: impl Into<String>) -> StoreError {
        StoreError::new(StoreErrorKind::Auth, message)
    }

    /// The store's settings cannot work.
    pub fn invalid(message: impl Into<String>) -> StoreError {
        StoreError::new(StoreErrorKind::Invalid, message)
    }

    /// Data file `path` could not be read or parsed; the message reads `<path>: <message>`.
    pub fn file(path: impl std::fmt::Display, message: impl std::fmt::Display) -> StoreError {
        StoreError::new(StoreErrorKind::File, format!("{path}: {message}"))
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

/// A key/value store reconfd can read from.
#[async_trait]
pub trait Store: Send + Sync {
    /// Short name used in logs, such as `file` or `etcd`.
    fn name(&self) -> &'static str;

    /// Reads every key under any of `prefixes`.
    async fn fetch(&self, prefixes: &[String]) -> Result<Snapshot, StoreError>;

    /// Starts reporting changes under `prefixes` made after `snapshot` was read and after the
    /// changes this store's earlier watches reported. `None` means the store cannot watch,
    /// and the daemon falls back to polling. The stream ends when the watch does; the daemon
    /// applies every event it queued, then watches again.
    async fn watch(
        &self,
        prefixes: &[String],
        snapshot: &Snapshot,
    ) -> Result<Option<WatchStream>, StoreError>;
}

/// True when `key` lies under `prefix` in path terms, as confd's stores select keys: a plain
/// string prefix match, so `/app` selects `/app/x` and also `/apple`.
pub fn under_prefix(key: &str, prefix: &str) -> bool {
    key.starts_with(prefix)
}

/// True when `key` lies under any of `prefixes`.
pub fn under_any(key: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|prefix| under_prefix(key, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_under_overlapping_prefixes_are_counted_once_and_no_further_than_asked() {
        let snapshot = Snapshot {
            entries: ["/app/a", "/app/b/c", "/apple", "/db/x", "/other"]
                .into_iter()
                .map(|key| (key.to_string(), "v".to_string()))
                .collect(),
            revision: None,
        };
        let prefixes = |all: &[&str]| all.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert_eq!(snapshot.count_under(&prefixes(&["/app"]), 10), 3);
        assert_eq!(
            snapshot.count_under(&prefixes(&["/app/b", "/app", "/db"]), 10),
            4
        );
        assert_eq!(snapshot.count_under(&prefixes(&["/app/", "/db"]), 2), 2);
        assert_eq!(snapshot.count_under(&prefixes(&["/none"]), 10), 0);
        assert_eq!(snapshot.count_under(&prefixes(&["/app"]), 0), 0);
    }
}
