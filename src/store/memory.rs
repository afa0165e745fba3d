//! A store held in memory and scripted by a test: its data, fetches that fail, watches that
//! fail or end, and events sent at the moment the test chooses. The controller is tested
//! against it under tokio's paused clock, with no server.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc};

use super::{Change, Snapshot, Store, StoreError, StoreErrorKind, WatchEvent, WatchStream};

/// What the next call of [`Store::watch`] does.
#[derive(Debug)]
pub(crate) enum NextWatch {
    /// Opens a stream that ends at once.
    EndAtOnce,
    /// Fails to open, with an error of this kind.
    Fail(StoreErrorKind),
}

struct State {
    data: Snapshot,
    /// Revision of the latest change.
    revision: i64,
    /// Fetches still to fail before one succeeds.
    failing_fetches: usize,
    /// The kind of their failure.
    failure: StoreErrorKind,
    /// The next fetch panics, as a bug would.
    panicking_fetch: bool,
    fetches: usize,
    next_watches: VecDeque<NextWatch>,
    /// Watch streams opened so far.
    opened: usize,
    /// Calls of `watch` so far, failed ones included.
    watch_calls: usize,
    /// The open stream's sender, if one is open.
    stream: Option<mpsc::Sender<Result<WatchEvent, StoreError>>>,
}

impl Default for State {
    fn default() -> State {
        State {
            data: Snapshot::default(),
            revision: 0,
            failing_fetches: 0,
            failure: StoreErrorKind::Unreachable,
            panicking_fetch: false,
            fetches: 0,
            next_watches: VecDeque::new(),
            opened: 0,
            watch_calls: 0,
            stream: None,
        }
    }
}

/// The store side, handed to the controller.
pub(crate) struct MemoryStore {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

/// The test's side: changes the data and scripts what the store does.
#[derive(Clone)]
pub(crate) struct Script {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

/// A store holding `entries`, and the script that drives it.
pub(crate) fn store(entries: &[(&str, &str)]) -> (MemoryStore, Script) {
    let state = Arc::new(Mutex::new(State {
        data: Snapshot {
            entries: entries
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            revision: Some(1),
            ..Snapshot::default()
        },
        revision: 1,
        ..State::default()
    }));
    let changed = Arc::new(Notify::new());
    (
        MemoryStore {
            state: Arc::clone(&state),
            changed: Arc::clone(&changed),
        },
        Script { state, changed },
    )
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Script {
    /// Sets `key` in the data and reports it on the open watch, as one new revision.
    pub(crate) async fn put(&self, key: &str, value: &str) {
        let (revision, sender) = {
            let mut state = lock(&self.state);
            state.revision += 1;
            let revision = state.revision;
            state.data.revision = Some(revision);
            state
                .data
                .entries
                .insert(key.to_string(), value.to_string());
            (revision, state.stream.clone())
        };
        if let Some(sender) = sender {
            let change = Change::Put {
                key: key.to_string(),
                value: value.to_string(),
            };
            self.send_on(&sender, Some(revision), vec![change]).await;
        }
    }

    /// Sets `key` in the data without telling the watch: only a fetch sees it.
    pub(crate) fn put_quietly(&self, key: &str, value: &str) {
        let mut state = lock(&self.state);
        state.revision += 1;
        state.data.revision = Some(state.revision);
        state
            .data
            .entries
            .insert(key.to_string(), value.to_string());
    }

    /// Sends changes on the open watch as made at `revision`, whatever the data holds: an
    /// event the store delivers late.
    pub(crate) async fn send(&self, revision: Option<i64>, changes: Vec<Change>) {
        let sender = lock(&self.state).stream.clone();
        if let Some(sender) = sender {
            self.send_on(&sender, revision, changes).await;
        }
    }

    async fn send_on(
        &self,
        sender: &mpsc::Sender<Result<WatchEvent, StoreError>>,
        revision: Option<i64>,
        changes: Vec<Change>,
    ) {
        // A closed stream is a watch the controller has left; the next one gets the data
        // by its fetch.
        let _ = sender
            .send(Ok(WatchEvent::Changes { revision, changes }))
            .await;
    }

    /// Makes the next fetch panic, then the `count` after it fail.
    pub(crate) fn panic_then_fail_fetches(&self, count: usize) {
        let mut state = lock(&self.state);
        state.panicking_fetch = true;
        state.failing_fetches = count;
    }

    /// Makes the next `count` fetches fail as an unreachable store's do.
    pub(crate) fn fail_fetches(&self, count: usize) {
        self.fail_fetches_with(StoreErrorKind::Unreachable, count);
    }

    /// Makes the next `count` fetches fail with an error of `kind`.
    pub(crate) fn fail_fetches_with(&self, kind: StoreErrorKind, count: usize) {
        let mut state = lock(&self.state);
        state.failing_fetches = count;
        state.failure = kind;
    }

    /// Scripts the next calls of `watch`, in order; after them, watches open normally.
    pub(crate) fn next_watches(&self, watches: impl IntoIterator<Item = NextWatch>) {
        lock(&self.state).next_watches.extend(watches);
    }

    /// How many fetches were made.
    pub(crate) fn fetches(&self) -> usize {
        lock(&self.state).fetches
    }

    /// How many times the controller asked for a watch, failed attempts included.
    pub(crate) fn watch_calls(&self) -> usize {
        lock(&self.state).watch_calls
    }

    /// How many watch streams were opened.
    pub(crate) fn watches(&self) -> usize {
        lock(&self.state).opened
    }

    /// Returns once at least `count` watch streams have been opened.
    pub(crate) async fn wait_for_watches(&self, count: usize) {
        loop {
            let notified = self.changed.notified();
            if self.watches() >= count {
                return;
            }
            notified.await;
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn fetch(&self, prefixes: &[String]) -> Result<Snapshot, StoreError> {
        let mut state = lock(&self.state);
        state.fetches += 1;
        if std::mem::take(&mut state.panicking_fetch) {
            drop(state);
            panic!("memory: scripted panic");
        }
        if state.failing_fetches > 0 {
            state.failing_fetches -= 1;
            return Err(scripted_failure(state.failure));
        }
        let mut snapshot = state.data.clone();
        snapshot
            .entries
            .retain(|key, _| super::under_any(key, prefixes));
        Ok(snapshot)
    }

    async fn watch(
        &self,
        _prefixes: &[String],
        _snapshot: &Snapshot,
    ) -> Result<Option<WatchStream>, StoreError> {
        let mut state = lock(&self.state);
        state.watch_calls += 1;
        let (sender, stream) = mpsc::channel(1024);
        let stream = match state.next_watches.pop_front() {
            Some(NextWatch::EndAtOnce) => {
                // The stream ends as its only sender goes.
                drop(sender);
                state.opened += 1;
                stream
            }
            Some(NextWatch::Fail(kind)) => return Err(scripted_failure(kind)),
            None => {
                state.stream = Some(sender);
                state.opened += 1;
                stream
            }
        };
        drop(state);
        self.changed.notify_waiters();
        Ok(Some(stream))
    }
}

/// A scripted failure of `kind`.
fn scripted_failure(kind: StoreErrorKind) -> StoreError {
    StoreError::new(kind, format!("memory: scripted {kind} failure"))
}
