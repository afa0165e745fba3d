//! Key/value stores behind one small interface.
//!
//! Every store answers two questions: "what are all the keys under these prefixes right now"
//! ([`Store::fetch`], a [`Snapshot`]) and, where the store can tell, "what changed since then"
//! ([`Store::watch`], a stream of [`WatchEvent`]s). The daemon keeps one snapshot per store and
//! applies watch events to it incrementally; the renderers only ever read snapshots.

pub mod backend;
pub mod catalog;
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

/// A value whose bytes are not UTF-8, so no template can be given it: where its first invalid
/// byte is. The key is kept with this in place of a value, so that the resources that see the
/// key fail naming it instead of reading it changed (replacement characters) or gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotUtf8 {
    /// The first byte that is not part of a UTF-8 sequence.
    pub byte: u8,
    /// Its offset in the value, from 0.
    pub offset: usize,
}

impl std::fmt::Display for NotUtf8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not valid UTF-8 (byte {:#04x} at offset {})",
            self.byte, self.offset
        )
    }
}

impl NotUtf8 {
    /// The line of `bytes` (from 1) and its column in bytes (from 1) where they stop being
    /// UTF-8.
    pub fn line_column(&self, bytes: &[u8]) -> (usize, usize) {
        let before = &bytes[..self.offset.min(bytes.len())];
        let line = before.iter().filter(|byte| **byte == b'\n').count() + 1;
        let column = before.len()
            - before
                .iter()
                .rposition(|byte| *byte == b'\n')
                .map_or(0, |i| i + 1)
            + 1;
        (line, column)
    }

    /// Where `bytes` stop being UTF-8, as `error` found.
    fn at(bytes: &[u8], error: std::str::Utf8Error) -> NotUtf8 {
        let offset = error.valid_up_to();
        NotUtf8 {
            // An error's offset is that of a byte of the value: `valid_up_to` is below the
            // length whenever there is an error at all.
            byte: bytes.get(offset).copied().unwrap_or_default(),
            offset,
        }
    }
}

/// A value as a store holds it: its text, or where its bytes stop being UTF-8.
pub type Value = Result<String, NotUtf8>;

/// The value whose bytes are `bytes`: every store that holds bytes turns them into a value
/// here, so none replaces or drops what is not UTF-8 on its own.
pub fn value(bytes: Vec<u8>) -> Value {
    String::from_utf8(bytes).map_err(|e| NotUtf8::at(e.as_bytes(), e.utf8_error()))
}

/// The text of `bytes`, or where they stop being UTF-8: [`value`] for borrowed bytes.
pub fn text(bytes: &[u8]) -> Result<&str, NotUtf8> {
    std::str::from_utf8(bytes).map_err(|e| NotUtf8::at(bytes, e))
}

/// A consistent view of a store's keys under a set of prefixes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The keys and values.
    pub entries: KeyMap,
    /// The keys whose values are not UTF-8 (never also in `entries`).
    pub not_utf8: BTreeMap<String, NotUtf8>,
    /// The store's revision this snapshot was read at, where the store has one (etcd): it
    /// holds every change up to it. Watch changes applied later do not move it.
    pub revision: Option<i64>,
}

impl Snapshot {
    /// The snapshot of a full read's `pairs`, a later pair of a key replacing an earlier one.
    /// Ranges come sorted by key, which the maps are built from at once, where inserting the
    /// pairs one by one would search the tree for each (a tenth of a 10,000-key `--onetime`).
    pub fn from_pairs(pairs: Vec<(String, Value)>) -> Snapshot {
        let mut entries = Vec::with_capacity(pairs.len());
        let mut not_utf8 = Vec::new();
        for (key, value) in pairs {
            match value {
                Ok(value) => entries.push((key, value)),
                Err(fault) => not_utf8.push((key, fault)),
            }
        }
        // Within one revision a key has one value, so no key lands in both maps.
        Snapshot {
            entries: entries.into_iter().collect(),
            not_utf8: not_utf8.into_iter().collect(),
            revision: None,
        }
    }

    /// The keys that start with `prefix` and their values, in key order, as a store's prefix
    /// read selects them.
    pub fn starting_with<'s>(
        &'s self,
        prefix: &'s str,
    ) -> impl Iterator<Item = (&'s String, &'s String)> {
        self.entries
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(key, _)| under_prefix(key, prefix))
    }

    /// How many keys start with `prefix`, as a store's prefix read selects them.
    pub fn count_starting_with(&self, prefix: &str) -> usize {
        self.starting_with(prefix).count()
    }

    /// How many keys lie in the trees of `prefixes` (each key counted once), counting no
    /// further than `enough`. A tree is the prefix and what lies below it at a `/`: the
    /// guard of an emptied `/proxy` is not fooled by a sibling `/proxy-old`, although confd's
    /// string prefix shows that sibling to the template.
    pub fn count_under(&self, prefixes: &[String], enough: usize) -> usize {
        let mut sorted: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        let mut counted: Vec<&str> = Vec::new();
        let mut count = 0;
        for prefix in sorted {
            // A prefix in the tree of one already counted holds no key of its own.
            if count >= enough || counted.iter().any(|outer| in_tree(prefix, outer)) {
                continue;
            }
            count += self
                .starting_with(prefix)
                .filter(|(key, _)| in_tree(key, prefix))
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
                self.not_utf8.remove(&key);
                self.entries.insert(key, value);
            }
            Change::NotUtf8 { key, fault } => {
                self.entries.remove(&key);
                self.not_utf8.insert(key, fault);
            }
            Change::Delete { key } => {
                self.entries.remove(&key);
                self.not_utf8.remove(&key);
            }
        }
    }

    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: String, value: Value) {
        self.apply(Change::put(key, value));
    }

    /// Adds every key of `other`, its values replacing these.
    pub fn merge(&mut self, other: Snapshot) {
        for (key, fault) in other.not_utf8 {
            self.apply(Change::NotUtf8 { key, fault });
        }
        for (key, value) in other.entries {
            self.apply(Change::Put { key, value });
        }
    }

    /// Every key starting with `root` and its value, in key order.
    pub fn values_under<'s>(&'s self, root: &'s str) -> impl Iterator<Item = (&'s str, Value)> {
        let texts = self
            .entries
            .range::<str, _>((Bound::Included(root), Bound::Unbounded))
            .take_while(move |(key, _)| key.starts_with(root))
            .map(|(key, value)| (key.as_str(), Ok(value.clone())));
        let faults = self
            .not_utf8
            .range::<str, _>((Bound::Included(root), Bound::Unbounded))
            .take_while(move |(key, _)| key.starts_with(root))
            .map(|(key, fault)| (key.as_str(), Err(*fault)));
        texts.chain(faults)
    }

    /// The first key under any of `prefixes` whose value is not UTF-8, and where.
    pub fn first_not_utf8(&self, prefixes: &[String]) -> Option<(&str, NotUtf8)> {
        if self.not_utf8.is_empty() {
            return None;
        }
        self.not_utf8
            .iter()
            .find(|(key, _)| under_any(key, prefixes))
            .map(|(key, fault)| (key.as_str(), *fault))
    }
}

impl FromIterator<(String, Value)> for Snapshot {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(values: I) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (key, value) in values {
            snapshot.insert(key, value);
        }
        snapshot
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
    /// The key was created or its value replaced by one that is not UTF-8.
    NotUtf8 {
        /// Absolute key.
        key: String,
        /// Where the value stops being UTF-8.
        fault: NotUtf8,
    },
    /// The key was removed.
    Delete {
        /// Absolute key.
        key: String,
    },
}

impl Change {
    /// `key` created or set to `value`.
    pub fn put(key: String, value: Value) -> Change {
        match value {
            Ok(value) => Change::Put { key, value },
            Err(fault) => Change::NotUtf8 { key, fault },
        }
    }

    /// The key this change touches.
    pub fn key(&self) -> &str {
        match self {
            Change::Put { key, .. } | Change::NotUtf8 { key, .. } | Change::Delete { key } => key,
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

/// True when `key` is `prefix` or lies below it at a `/` boundary: `/app` holds `/app` and
/// `/app/x`, not `/apple`.
fn in_tree(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix).is_some_and(|rest| {
        rest.is_empty() || rest.starts_with('/') || prefix.is_empty() || prefix.ends_with('/')
    })
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
            ..Snapshot::default()
        };
        let prefixes = |all: &[&str]| all.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        // `/apple` is a sibling of `/app`, not in its tree.
        assert_eq!(snapshot.count_under(&prefixes(&["/app"]), 10), 2);
        assert_eq!(snapshot.count_under(&prefixes(&["/ap"]), 10), 0);
        assert_eq!(snapshot.count_under(&prefixes(&["/apple"]), 10), 1);
        assert_eq!(snapshot.count_under(&prefixes(&["/"]), 10), 5);
        assert_eq!(snapshot.count_under(&prefixes(&[""]), 10), 5);
        assert_eq!(
            snapshot.count_under(&prefixes(&["/app/b", "/app", "/db"]), 10),
            3
        );
        assert_eq!(snapshot.count_under(&prefixes(&["/app/", "/db"]), 2), 2);
        assert_eq!(snapshot.count_under(&prefixes(&["/none"]), 10), 0);
        assert_eq!(snapshot.count_under(&prefixes(&["/app"]), 0), 0);
        // A store's prefix read is a string prefix: `/app` selects `/apple` too.
        assert_eq!(snapshot.count_starting_with("/app"), 3);
    }

    #[test]
    fn a_full_read_is_the_same_snapshot_as_its_pairs_applied_one_by_one() {
        // Two overlapping prefixes read the same keys twice; one value is not UTF-8.
        let pairs = vec![
            ("/app/a".to_string(), value(b"1".to_vec())),
            ("/app/b".to_string(), value(vec![b'x', 0xff])),
            ("/app/c".to_string(), value(b"3".to_vec())),
            ("/app/a".to_string(), value(b"1".to_vec())),
            ("/app/b".to_string(), value(vec![b'x', 0xff])),
        ];
        let mut applied = Snapshot::default();
        for (key, value) in pairs.clone() {
            applied.insert(key, value);
        }
        let built = Snapshot::from_pairs(pairs);
        assert_eq!(built, applied);
        assert_eq!(built.entries.len(), 2);
        assert!(built.not_utf8.contains_key("/app/b"));
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn bytes_are_text_exactly_when_utf8_and_else_name_the_first_bad_byte(
            bytes in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..32),
                any::<String>().prop_map(String::into_bytes),
            ]
        ) {
            match (value(bytes.clone()), std::str::from_utf8(&bytes)) {
                (Ok(text), Ok(expected)) => prop_assert_eq!(text, expected),
                (Err(fault), Err(e)) => {
                    prop_assert_eq!(fault.offset, e.valid_up_to());
                    prop_assert_eq!(fault.byte, bytes[fault.offset]);
                    prop_assert_eq!(text(&bytes), Err(fault));
                    let (line, column) = fault.line_column(&bytes);
                    prop_assert!(line >= 1 && column >= 1 && column <= fault.offset + 1);
                    let offset = format!("offset {}", fault.offset);
                    prop_assert!(fault.to_string().contains(&offset));
                }
                (got, expected) => prop_assert!(false, "{got:?} for {expected:?}"),
            }
        }

        #[test]
        fn a_key_is_text_or_not_utf8_never_both(
            changes in prop::collection::vec(
                (0u8..4, prop::collection::vec(any::<u8>(), 0..4), any::<bool>()),
                0..24,
            )
        ) {
            let mut snapshot = Snapshot::default();
            for (key, bytes, delete) in changes {
                let key = format!("/k{key}");
                snapshot.apply(if delete {
                    Change::Delete { key }
                } else {
                    Change::put(key, value(bytes))
                });
            }
            for key in snapshot.not_utf8.keys() {
                prop_assert!(!snapshot.entries.contains_key(key));
            }
            let under: Vec<(&str, Value)> = snapshot.values_under("/k").collect();
            prop_assert_eq!(under.len(), snapshot.entries.len() + snapshot.not_utf8.len());
        }
    }
}
