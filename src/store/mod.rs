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
#[cfg(test)]
pub(crate) mod memory;
pub mod nats;
pub mod redis;
pub mod vault;
pub mod zookeeper;

use std::collections::BTreeMap;

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

/// Why a store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A data file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file at fault.
        path: String,
        /// What was wrong with it.
        message: String,
    },
    /// The store cannot be reached or answered with an error.
    #[error("{0}")]
    Unavailable(String),
    /// The store's settings cannot work, such as an invalid file filter.
    #[error("{0}")]
    Invalid(String),
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
