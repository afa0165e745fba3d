//! The ZooKeeper store: keys are znode paths and values their data, read the way confd's
//! zookeeper backend reads them.
//!
//! Only znodes without children are keys. A znode with children is a directory: its own data
//! is not a key. A prefix that names a leaf znode is itself a key, and a prefix that does not
//! exist yields no keys. As in every store a prefix selects keys by plain string prefix (`/app`
//! also selects `/apple/x`), so a prefix is read from its parent znode, following only the
//! children whose name starts with the prefix's last segment. Data that is not UTF-8 is read
//! lossily.
//!
//! A tree is read level by level, each level in multi-read requests of many reads, several of
//! them in flight on the one session: 10,000 znodes cost a few dozen requests, not 10,000
//! round trips.
//!
//! A watch sets one persistent recursive watch (ZooKeeper 3.6 and later) on the parent znode of
//! each prefix, then reads everything, which covers the changes made between the caller's fetch
//! and the watch being set. The one-shot data and child watches confd uses must be set again
//! after every event, and a change made before that is missed; a persistent watch stays set for
//! as long as the session lives, so nothing needs re-arming and no change goes unseen. Each
//! create, delete or data change under a prefix is answered by reading again the znodes whose
//! key it may have changed (the znode itself and, for a create or a delete, its parent, which
//! may have gained its first child or lost its last) and reporting each one's current state.
//!
//! A watch lasts as long as its connection. ZooKeeper does not send the persistent watch events
//! missed while a client was disconnected (ZOOKEEPER-4698), and zookeeper-client 0.11 does not
//! set persistent watches again when it reconnects, so a lost connection ends the watch, as an
//! ended session does. The daemon's next watch sets the watches on a connected session (a new
//! one when the old one is still reconnecting) and reads everything again.

pub mod lease;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use futures_util::future::join_all;
use futures_util::stream::{self, BoxStream, FuturesUnordered, StreamExt};
use tokio::sync::Mutex;
use zookeeper_client as zk;

use super::watch::{self, WatchSender};
use super::{Change, Snapshot, Store, StoreError, StoreErrorKind, WatchStream, under_any, value};

/// Asked of the servers for each session: a server that does not hear from reconfd for this
/// long ends its session.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads per multi-read request: few requests for a large tree, answers of a few hundred
/// kilobytes for usual values.
const BATCH: usize = 500;

/// Multi-read requests in flight at once, so the server always has the next one to answer.
const IN_FLIGHT: usize = 4;

/// How to reach ZooKeeper.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ZookeeperOptions {
    /// Servers as `host:port`, an ensemble's members.
    pub nodes: Vec<String>,
}

/// Reads znodes from ZooKeeper.
pub struct ZookeeperStore {
    /// The servers as the client's connect string, which also names them in messages.
    servers: String,
    /// The session, opened on first use and again once it is no longer connected.
    client: Mutex<Option<zk::Client>>,
}

impl ZookeeperStore {
    /// A store for `options`; no connection is made yet. Fails when a node is not
    /// `host:port` (or a bare host, for port 2181).
    pub fn new(options: &ZookeeperOptions) -> Result<ZookeeperStore, StoreError> {
        if options.nodes.is_empty() {
            return Err(StoreError::invalid("zookeeper: no node given"));
        }
        for node in &options.nodes {
            check_node(node).map_err(|reason| {
                StoreError::invalid(format!("zookeeper node {node:?}: {reason}"))
            })?;
        }
        Ok(ZookeeperStore {
            servers: options.nodes.join(","),
            client: Mutex::new(None),
        })
    }

    /// The current session, or a new one when there is none or it lost its connection.
    async fn client(&self) -> Result<zk::Client, StoreError> {
        let mut current = self.client.lock().await;
        if let Some(client) = current.as_ref().filter(|client| connected(client.state())) {
            return Ok(client.clone());
        }
        // A session that lost its connection is given up (it closes once it reconnects, or
        // expires) rather than waited for: a new one is made at once or fails at once, every
        // server tried once, and the daemon retries with its backoff.
        let client = connect(&self.servers, SESSION_TIMEOUT).await?;
        *current = Some(client.clone());
        Ok(client)
    }
}

#[async_trait]
impl Store for ZookeeperStore {
    fn name(&self) -> &'static str {
        "zookeeper"
    }

    async fn fetch(&self, prefixes: &[String]) -> Result<Snapshot, StoreError> {
        let client = self.client().await?;
        Reader::new(&client, &self.servers).keys(prefixes).await
    }

    /// Sets a persistent recursive watch on the parent of each prefix, reads every key, and
    /// reports a [`WatchEvent::Replace`](super::WatchEvent::Replace) first when that differs
    /// from `snapshot`.
    async fn watch(
        &self,
        prefixes: &[String],
        snapshot: &Snapshot,
    ) -> Result<Option<WatchStream>, StoreError> {
        let client = self.client().await?;
        let reader = Reader::new(&client, &self.servers);
        let roots = watch_roots(prefixes);
        let watchers = join_all(roots.iter().map(|root| {
            let (client, reader) = (&client, &reader);
            async move {
                client
                    .watch(root, zk::AddWatchMode::PersistentRecursive)
                    .await
                    .map_err(|e| reader.fail(&format!("watching {root}"), e))
            }
        }))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
        let read = reader.keys(prefixes).await?;
        tracing::debug!(
            "zookeeper {}: watching {} under {roots:?}",
            self.servers,
            prefixes.join(", ")
        );
        let (events, stream) = if read == *snapshot {
            watch::channel()
        } else {
            watch::channel_replacing(read)
        };
        let follower = Follower {
            client: client.clone(),
            servers: self.servers.clone(),
            prefixes: prefixes.to_vec(),
            events,
        };
        tokio::spawn(follower.follow(watchers));
        Ok(Some(stream))
    }
}

/// Why `node` cannot be one of the connect string's servers, if it cannot.
fn check_node(node: &str) -> Result<(), String> {
    if node.contains(',') || node.contains('/') {
        return Err("give each server as host:port".to_string());
    }
    let (host, port) = match node.rsplit_once(':') {
        // An IPv6 address without brackets is all colons: it is a host without a port.
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => (host, Some(port)),
        _ => (node, None),
    };
    if host.is_empty() {
        return Err("no host".to_string());
    }
    match port.map(str::parse::<u16>) {
        None | Some(Ok(1..)) => Ok(()),
        Some(_) => Err("the port is not a number from 1 to 65535".to_string()),
    }
}

fn connected(state: zk::SessionState) -> bool {
    matches!(
        state,
        zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly
    )
}

/// True when `path` can be a key under `prefixes`. The root is never one: it always has the
/// `/zookeeper` child, and no walk reads it as a child.
fn is_key(path: &str, prefixes: &[String]) -> bool {
    path != "/" && under_any(path, prefixes)
}

/// Where reading each prefix starts: its parent znode, with the names a child of that parent
/// starts with to lie under the prefix. `/app/web` starts at `/app` with `web`, `/app/` at
/// `/app` with every child, `/` and the empty prefix at `/` with every child. A prefix that
/// does not start with `/` has no znode under it.
fn starts(prefixes: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut starts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for prefix in prefixes {
        let prefix = if prefix.is_empty() { "/" } else { prefix };
        let Some(slash) = prefix.rfind('/').filter(|_| prefix.starts_with('/')) else {
            continue;
        };
        let parent = if slash == 0 { "/" } else { &prefix[..slash] };
        starts
            .entry(parent.to_string())
            .or_default()
            .push(prefix[slash + 1..].to_string());
    }
    starts
}

/// The znodes to watch for `prefixes`: each prefix's parent, except those another one's
/// recursive watch already covers.
fn watch_roots(prefixes: &[String]) -> Vec<String> {
    let parents: Vec<String> = starts(prefixes).into_keys().collect();
    parents
        .iter()
        .filter(|path| {
            !parents
                .iter()
                .any(|other| other != *path && contains(other, path))
        })
        .cloned()
        .collect()
}

/// True when `path` is `root` or one of its descendants.
fn contains(root: &str, path: &str) -> bool {
    root == "/"
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn child_path(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

fn parent_path(path: &str) -> Option<&str> {
    match path.rfind('/')? {
        0 if path.len() > 1 => Some("/"),
        0 => None,
        slash => Some(&path[..slash]),
    }
}

/// The znodes whose key `events` may have changed: the znode of each event, and for a create
/// or a delete its parent, which may have gained its first child or lost its last. Only those
/// that can be keys under `prefixes` are kept.
fn touched<'e>(
    events: impl IntoIterator<Item = (zk::EventType, &'e str)>,
    prefixes: &[String],
) -> BTreeSet<String> {
    let mut touched = BTreeSet::new();
    for (kind, path) in events {
        match kind {
            zk::EventType::NodeCreated | zk::EventType::NodeDeleted => {
                touched.insert(path.to_string());
                if let Some(parent) = parent_path(path) {
                    touched.insert(parent.to_string());
                }
            }
            zk::EventType::NodeDataChanged => {
                touched.insert(path.to_string());
            }
            // Session events are the follower's business, and recursive watches report no
            // child changes: the child's own create or delete says it.
            zk::EventType::Session | zk::EventType::NodeChildrenChanged => {}
        }
    }
    touched.retain(|path| is_key(path, prefixes));
    touched
}

/// The change that reports what a znode read as `answer` is now as a key.
fn change(key: String, answer: Answer) -> Change {
    match answer {
        Answer::Node { data, children: 0 } => Change::put(key, value(data)),
        _ => Change::Delete { key },
    }
}

/// One read in a multi-read request.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Read {
    /// A znode's data and number of children.
    Node(String),
    /// The children of a directory under a prefix: all of them are under it too.
    Children(String),
    /// The children of a prefix's parent, of which only those whose name starts with one of
    /// `names` lie under a prefix.
    Start {
        /// The parent.
        path: String,
        /// The starts of the names that matter.
        names: Vec<String>,
    },
}

impl Read {
    fn path(&self) -> &str {
        match self {
            Read::Node(path) | Read::Children(path) | Read::Start { path, .. } => path,
        }
    }
}

/// What a read found, as far as keys care.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    /// The znode's data and how many children it has.
    Node { data: Vec<u8>, children: i32 },
    /// The names of the znode's children.
    Children(Vec<String>),
    /// The znode does not exist (any more).
    Missing,
}

/// Reading every key under some prefixes, one level of the tree at a time.
struct Walk<'p> {
    prefixes: &'p [String],
    keys: Snapshot,
}

impl<'p> Walk<'p> {
    /// A walk of `prefixes` and its first reads.
    fn new(prefixes: &'p [String]) -> (Walk<'p>, Vec<Read>) {
        let reads = starts(prefixes)
            .into_iter()
            .map(|(path, names)| Read::Start { path, names })
            .collect();
        let walk = Walk {
            prefixes,
            keys: Snapshot::default(),
        };
        (walk, reads)
    }

    /// Takes in what `read` found and returns the reads that follow from it.
    fn answered(&mut self, read: Read, answer: Answer) -> Vec<Read> {
        match (read, answer) {
            (Read::Node(path), Answer::Node { children: 1.., .. }) => vec![Read::Children(path)],
            (Read::Node(path), Answer::Node { data, .. }) => {
                if is_key(&path, self.prefixes) {
                    self.keys.insert(path, value(data));
                }
                Vec::new()
            }
            (Read::Children(path), Answer::Children(names)) => names
                .iter()
                .map(|name| Read::Node(child_path(&path, name)))
                .collect(),
            (Read::Start { path, names }, Answer::Children(children)) => children
                .iter()
                .filter(|child| names.iter().any(|name| child.starts_with(name.as_str())))
                .map(|child| Read::Node(child_path(&path, child)))
                .collect(),
            // Deleted while the tree was read, or a prefix's parent that does not exist. The
            // reader pairs every other read with its own kind of answer.
            _ => Vec::new(),
        }
    }
}

/// Reads on one session, many at a time.
struct Reader<'a> {
    client: &'a zk::Client,
    servers: &'a str,
}

impl<'a> Reader<'a> {
    fn new(client: &'a zk::Client, servers: &'a str) -> Reader<'a> {
        Reader { client, servers }
    }

    /// Every key under `prefixes`.
    async fn keys(&self, prefixes: &[String]) -> Result<Snapshot, StoreError> {
        let (mut walk, reads) = Walk::new(prefixes);
        self.run(reads, |read, answer| walk.answered(read, answer))
            .await?;
        Ok(walk.keys)
    }

    /// What each of `paths` is now as a key.
    async fn current(&self, paths: BTreeSet<String>) -> Result<Vec<Change>, StoreError> {
        let mut changes = Vec::with_capacity(paths.len());
        let reads = paths.into_iter().map(Read::Node).collect();
        self.run(reads, |read, answer| {
            changes.push(change(read.path().to_string(), answer));
            Vec::new()
        })
        .await?;
        Ok(changes)
    }

    /// Runs `reads`, and the reads `answered` returns for what each one found, in multi-read
    /// requests of up to [`BATCH`] reads, [`IN_FLIGHT`] of them at once.
    async fn run(
        &self,
        reads: Vec<Read>,
        mut answered: impl FnMut(Read, Answer) -> Vec<Read>,
    ) -> Result<(), StoreError> {
        let mut queue: VecDeque<Read> = reads.into();
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < IN_FLIGHT && !queue.is_empty() {
                let batch: Vec<Read> = queue.drain(..queue.len().min(BATCH)).collect();
                in_flight.push(self.send(batch));
            }
            let Some(answers) = in_flight.next().await else {
                return Ok(());
            };
            for (read, answer) in answers? {
                queue.extend(answered(read, answer));
            }
        }
    }

    /// Sends one multi-read request and pairs each read with its answer.
    async fn send(&self, batch: Vec<Read>) -> Result<Vec<(Read, Answer)>, StoreError> {
        let mut request = self.client.new_multi_reader();
        for read in &batch {
            let added = match read {
                Read::Node(path) => request.add_get_data(path),
                Read::Children(path) | Read::Start { path, .. } => request.add_get_children(path),
            };
            added.map_err(|e| self.fail(&format!("reading {}", read.path()), e))?;
        }
        let what = match batch.len() {
            1 => format!("reading {}", batch[0].path()),
            n => format!("reading {} and {} more znodes", batch[0].path(), n - 1),
        };
        let results = request.commit().await.map_err(|e| self.fail(&what, e))?;
        if results.len() != batch.len() {
            return Err(self.fail(
                &what,
                zk::Error::UnexpectedError(format!(
                    "{} answers to {} reads",
                    results.len(),
                    batch.len()
                )),
            ));
        }
        batch
            .into_iter()
            .zip(results)
            .map(|(read, result)| {
                let answer = match (&read, result) {
                    (Read::Node(_), zk::MultiReadResult::Data { data, stat }) => Answer::Node {
                        data,
                        children: stat.num_children,
                    },
                    (
                        Read::Children(_) | Read::Start { .. },
                        zk::MultiReadResult::Children { children },
                    ) => Answer::Children(children),
                    (
                        _,
                        zk::MultiReadResult::Error {
                            err: zk::Error::NoNode,
                        },
                    ) => Answer::Missing,
                    (_, zk::MultiReadResult::Error { err }) => {
                        return Err(self.fail(&format!("reading {}", read.path()), err));
                    }
                    (_, other) => {
                        let message = format!("unexpected answer {other:?}");
                        return Err(self.fail(
                            &format!("reading {}", read.path()),
                            zk::Error::UnexpectedError(message),
                        ));
                    }
                };
                Ok((read, answer))
            })
            .collect()
    }

    /// An error naming the servers and what failed, such as the znode being read.
    fn fail(&self, what: &str, cause: zk::Error) -> StoreError {
        StoreError::new(
            error_kind(&cause),
            format!("zookeeper {}: {what}: {cause}", self.servers),
        )
    }
}

/// A new session with `servers`, each tried once, that expires `session_timeout` after its
/// connection is lost.
async fn connect(servers: &str, session_timeout: Duration) -> Result<zk::Client, StoreError> {
    let connected = zk::Client::connector()
        .with_session_timeout(session_timeout)
        .with_fail_eagerly()
        .connect(servers)
        .await;
    match connected {
        Ok(client) => Ok(client),
        Err(e) => {
            let why = match e {
                zk::Error::NoHosts => format!(" ({})", why_unavailable(servers).await),
                _ => String::new(),
            };
            Err(StoreError::new(
                error_kind(&e),
                format!("zookeeper {servers}: cannot connect: {e}{why}"),
            ))
        }
    }
}

/// Why no server of `servers` (`host:port,...`) took a session, as far as TCP tells: the
/// client says only that none was available, whether nothing listens or the port belongs to
/// another kind of server.
async fn why_unavailable(servers: &str) -> String {
    let mut reasons = Vec::new();
    for server in servers.split(',').filter(|server| !server.is_empty()) {
        // The chroot, if any, follows the last server.
        let address = server.split('/').next().unwrap_or(server);
        let reason = match tokio::time::timeout(
            CONNECT_PROBE_TIMEOUT,
            tokio::net::TcpStream::connect(address),
        )
        .await
        {
            Ok(Ok(_)) => "accepts connections but did not answer as ZooKeeper does: is it a \
                          ZooKeeper server?"
                .to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no connection within {CONNECT_PROBE_TIMEOUT:?}"),
        };
        reasons.push(format!("{address}: {reason}"));
    }
    reasons.join("; ")
}

/// Limit for the TCP connection that [`why_unavailable`] tries.
const CONNECT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The kind of failure a ZooKeeper error stands for. A znode whose ACL does not let reconfd
/// read it is `NoAuth`, credentials the ensemble refuses `AuthFailed`; a lost connection or
/// session, a timeout or an overloaded server passes; an answer the client cannot make sense
/// of counts as a server not serving, as for the other stores. The rest are requests the
/// server refused, such as a persistent watch asked of a server before 3.6 (`Unimplemented`).
fn error_kind(error: &zk::Error) -> StoreErrorKind {
    match error {
        zk::Error::NoAuth | zk::Error::AuthFailed => StoreErrorKind::Auth,
        zk::Error::NoHosts
        | zk::Error::Timeout
        | zk::Error::ConnectionLoss
        | zk::Error::SessionExpired
        | zk::Error::SessionMoved
        | zk::Error::ClientClosed
        | zk::Error::Throttled
        | zk::Error::UnmarshalError { .. }
        | zk::Error::MarshallingError
        | zk::Error::UnexpectedError(_)
        | zk::Error::UnexpectedErrorCode(_)
        | zk::Error::Custom(_) => StoreErrorKind::Unreachable,
        _ => StoreErrorKind::Rejected,
    }
}

/// A watcher's events as a stream, which ends after a terminal session event: the watcher
/// must not be asked for more after one.
fn notices(watcher: zk::PersistentWatcher) -> BoxStream<'static, zk::WatchedEvent> {
    stream::unfold(Some(watcher), |watcher| async move {
        let mut watcher = watcher?;
        let event = watcher.changed().await;
        let ended =
            event.event_type == zk::EventType::Session && event.session_state.is_terminated();
        Some((event, (!ended).then_some(watcher)))
    })
    .boxed()
}

/// The task behind a watch stream: turns watch events into what changed.
struct Follower {
    client: zk::Client,
    servers: String,
    prefixes: Vec<String>,
    events: WatchSender,
}

impl Follower {
    /// Reports what `watchers` see until the session ends or the daemon stops listening.
    /// The watchers are dropped with the task, which removes them from the session.
    async fn follow(self, watchers: Vec<zk::PersistentWatcher>) {
        let mut notices = stream::select_all(watchers.into_iter().map(notices));
        let ended = loop {
            let first = tokio::select! {
                notice = notices.next() => notice,
                () = self.events.closed() => return,
            };
            let Some(first) = first else {
                // Only a watch of prefixes no znode can be under has no watcher to end.
                self.events.closed().await;
                return;
            };
            // What else has come is handled with it: a burst costs a few reads, not one each.
            let mut batch = vec![first];
            while let Some(Some(notice)) = notices.next().now_or_never() {
                batch.push(notice);
            }
            // Any session event but a connection restored means the connection was lost or
            // the session ended; what changed meanwhile is for the next watch's full read.
            if let Some(state) = batch
                .iter()
                .filter(|notice| notice.event_type == zk::EventType::Session)
                .map(|notice| notice.session_state)
                .find(|state| !connected(*state))
            {
                break match state {
                    zk::SessionState::Disconnected => {
                        format!("zookeeper {}: the connection was lost", self.servers)
                    }
                    ended => format!("zookeeper {}: the session ended ({ended})", self.servers),
                };
            }
            let paths = touched(
                batch
                    .iter()
                    .map(|notice| (notice.event_type, notice.path.as_str())),
                &self.prefixes,
            );
            if paths.is_empty() {
                continue;
            }
            match self.send_current(paths).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => break e.to_string(),
            }
        };
        tracing::info!("{ended}; watching again");
    }

    /// Reads `paths` and reports what each is now. False when the daemon stopped listening.
    async fn send_current(&self, paths: BTreeSet<String>) -> Result<bool, StoreError> {
        let changes = Reader::new(&self.client, &self.servers)
            .current(paths)
            .await?;
        Ok(self.events.changes(None, changes).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyMap;

    #[test]
    fn errors_map_to_kinds() {
        let cases = [
            (zk::Error::NoAuth, StoreErrorKind::Auth),
            (zk::Error::AuthFailed, StoreErrorKind::Auth),
            (zk::Error::ConnectionLoss, StoreErrorKind::Unreachable),
            (zk::Error::NoHosts, StoreErrorKind::Unreachable),
            (zk::Error::Timeout, StoreErrorKind::Unreachable),
            (zk::Error::SessionExpired, StoreErrorKind::Unreachable),
            (zk::Error::Unimplemented, StoreErrorKind::Rejected),
            (
                zk::Error::BadArguments(&"bad path"),
                StoreErrorKind::Rejected,
            ),
        ];
        for (error, kind) in cases {
            assert_eq!(error_kind(&error), kind, "{error}");
        }
    }

    /// The events ZooKeeper sends for a change, as (kind, path).
    type Events = Vec<(zk::EventType, String)>;

    /// A change made to a tree.
    type Step = Box<dyn Fn(&mut Tree) -> Events>;

    /// An in-memory tree of znodes: path → data; children are the paths one level below.
    #[derive(Default)]
    struct Tree {
        nodes: BTreeMap<String, Vec<u8>>,
    }

    impl Tree {
        fn with(paths: &[(&str, &str)]) -> Tree {
            let mut tree = Tree::default();
            tree.nodes.insert("/".into(), Vec::new());
            tree.nodes.insert("/zookeeper".into(), Vec::new());
            for (path, data) in paths {
                tree.create(path, data);
            }
            tree
        }

        /// Creates `path` and any missing parents (with empty data), as `mkdir -p` would,
        /// returning the events ZooKeeper sends for it.
        fn create(&mut self, path: &str, data: &str) -> Events {
            let mut events = Vec::new();
            if let Some(parent) = parent_path(path)
                && !self.nodes.contains_key(parent)
            {
                events.extend(self.create(parent, ""));
            }
            self.nodes.insert(path.into(), data.as_bytes().to_vec());
            events.push((zk::EventType::NodeCreated, path.to_string()));
            events
        }

        fn set(&mut self, path: &str, data: &str) -> Events {
            self.nodes.insert(path.into(), data.as_bytes().to_vec());
            vec![(zk::EventType::NodeDataChanged, path.to_string())]
        }

        /// Deletes `path` and its subtree, children first, as ZooKeeper requires.
        fn delete(&mut self, path: &str) -> Events {
            let mut events = Vec::new();
            for child in self.children(path) {
                events.extend(self.delete(&child));
            }
            self.nodes.remove(path);
            events.push((zk::EventType::NodeDeleted, path.to_string()));
            events
        }

        fn children(&self, path: &str) -> Vec<String> {
            self.nodes
                .keys()
                .filter(|other| other.as_str() != "/" && parent_path(other) == Some(path))
                .cloned()
                .collect()
        }

        fn answer(&self, read: &Read) -> Answer {
            let Some(data) = self.nodes.get(read.path()) else {
                return Answer::Missing;
            };
            let children = self.children(read.path());
            match read {
                Read::Node(_) => Answer::Node {
                    data: data.clone(),
                    children: children.len() as i32,
                },
                Read::Children(_) | Read::Start { .. } => Answer::Children(
                    children
                        .iter()
                        .map(|child| child.rsplit('/').next().unwrap_or_default().to_string())
                        .collect(),
                ),
            }
        }

        /// What a fetch of `prefixes` returns from this tree.
        fn walk(&self, prefixes: &[String]) -> KeyMap {
            let (mut walk, reads) = Walk::new(prefixes);
            let mut queue: VecDeque<Read> = reads.into();
            while let Some(read) = queue.pop_front() {
                let answer = self.answer(&read);
                queue.extend(walk.answered(read, answer));
            }
            walk.keys.entries
        }

        /// What a watch reports for `events` on this tree, applied to `keys`.
        fn follow(
            &self,
            keys: &mut KeyMap,
            events: &[(zk::EventType, String)],
            prefixes: &[String],
        ) {
            let paths = touched(
                events.iter().map(|(kind, path)| (*kind, path.as_str())),
                prefixes,
            );
            let mut snapshot = Snapshot {
                entries: std::mem::take(keys),
                ..Snapshot::default()
            };
            for path in paths {
                let answer = self.answer(&Read::Node(path.clone()));
                snapshot.apply(change(path, answer));
            }
            *keys = snapshot.entries;
        }
    }

    fn prefixes(prefixes: &[&str]) -> Vec<String> {
        prefixes.iter().map(|prefix| prefix.to_string()).collect()
    }

    fn keys(pairs: &[(&str, &str)]) -> KeyMap {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn only_znodes_without_children_are_keys() {
        let tree = Tree::with(&[
            ("/app", "app data"),
            ("/app/name", "demo"),
            ("/app/servers", "directory data"),
            ("/app/servers/web1", "10.0.0.1"),
            ("/app/servers/web2", "10.0.0.2"),
            ("/apple/x", "string prefix"),
            ("/other", "elsewhere"),
        ]);
        assert_eq!(
            tree.walk(&prefixes(&["/app"])),
            keys(&[
                ("/app/name", "demo"),
                ("/app/servers/web1", "10.0.0.1"),
                ("/app/servers/web2", "10.0.0.2"),
                ("/apple/x", "string prefix"),
            ])
        );
        assert_eq!(
            tree.walk(&prefixes(&["/app/servers/web1"])),
            keys(&[("/app/servers/web1", "10.0.0.1")]),
            "a prefix naming a leaf is a key"
        );
        assert_eq!(
            tree.walk(&prefixes(&["/app/serv"])),
            keys(&[
                ("/app/servers/web1", "10.0.0.1"),
                ("/app/servers/web2", "10.0.0.2"),
            ]),
            "a prefix that is no znode selects by string prefix"
        );
        assert!(tree.walk(&prefixes(&["/missing/deeper"])).is_empty());
        assert!(tree.walk(&prefixes(&["relative"])).is_empty());
        let everything = tree.walk(&prefixes(&["/"]));
        assert_eq!(
            everything.get("/other").map(String::as_str),
            Some("elsewhere")
        );
        assert_eq!(everything.get("/zookeeper").map(String::as_str), Some(""));
        assert!(!everything.contains_key("/"));
    }

    #[test]
    fn prefixes_start_at_their_parent_and_watches_do_not_nest() {
        assert_eq!(
            starts(&prefixes(&["/app/web", "/app/db", "/", "/x/"])),
            BTreeMap::from([
                ("/".to_string(), vec!["".to_string()]),
                (
                    "/app".to_string(),
                    vec!["web".to_string(), "db".to_string()]
                ),
                ("/x".to_string(), vec!["".to_string()]),
            ])
        );
        assert_eq!(
            watch_roots(&prefixes(&["/a/b/c", "/a/bc/d", "/ab/x"])),
            ["/a/b", "/a/bc", "/ab"]
        );
        assert_eq!(watch_roots(&prefixes(&["/a/b/c", "/proxy"])), ["/"]);
        assert_eq!(watch_roots(&prefixes(&["/a/b/c", "/a/x"])), ["/a"]);
    }

    #[test]
    fn events_touch_the_znode_and_on_create_or_delete_its_parent() {
        let events = [
            (zk::EventType::NodeCreated, "/app/servers/web3"),
            (zk::EventType::NodeDataChanged, "/app/name"),
            (zk::EventType::NodeDeleted, "/app/x"),
            (zk::EventType::NodeCreated, "/other/y"),
            (zk::EventType::NodeCreated, "/app"),
        ];
        assert_eq!(
            touched(events, &prefixes(&["/app/"])),
            BTreeSet::from([
                "/app/name".to_string(),
                "/app/servers".to_string(),
                "/app/servers/web3".to_string(),
                "/app/x".to_string(),
            ])
        );
    }

    #[test]
    fn reading_touched_znodes_again_keeps_the_leaf_rule() {
        let watched = prefixes(&["/app"]);
        let mut tree = Tree::with(&[("/app/servers/web1", "10.0.0.1"), ("/app/name", "demo")]);
        let mut known = tree.walk(&watched);
        let steps: Vec<Step> = vec![
            Box::new(|tree| tree.create("/app/servers/web2", "10.0.0.2")),
            Box::new(|tree| tree.set("/app/servers/web1", "10.0.0.11")),
            // A key gains its first child: it becomes a directory.
            Box::new(|tree| tree.create("/app/name/first", "1")),
            // ... and loses it again: a key once more, with its old data.
            Box::new(|tree| tree.delete("/app/name/first")),
            // A directory's own data is no key.
            Box::new(|tree| tree.set("/app/servers", "ignored")),
            Box::new(|tree| tree.create("/apple/deep/down", "x")),
            // A deleted subtree takes its keys with it.
            Box::new(|tree| tree.delete("/app/servers")),
            Box::new(|tree| tree.create("/elsewhere/x", "no")),
        ];
        for (index, step) in steps.iter().enumerate() {
            let events = step(&mut tree);
            tree.follow(&mut known, &events, &watched);
            assert_eq!(known, tree.walk(&watched), "after step {index}");
        }
        assert_eq!(
            known,
            keys(&[("/app/name", "demo"), ("/apple/deep/down", "x")])
        );
    }

    #[test]
    fn nodes_must_be_host_and_port() {
        for good in [
            "127.0.0.1:2181",
            "zk1",
            "zk1.example.com:2182",
            "[::1]:2181",
            "::1",
        ] {
            assert_eq!(check_node(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ":2181",
            "zk1:0",
            "zk1:port",
            "zk1:2181,zk2:2181",
            "zk://zk1:2181",
        ] {
            assert!(check_node(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_split_and_join_at_the_root() {
        assert_eq!(parent_path("/a/b"), Some("/a"));
        assert_eq!(parent_path("/a"), Some("/"));
        assert_eq!(parent_path("/"), None);
        assert_eq!(child_path("/", "a"), "/a");
        assert_eq!(child_path("/a", "b"), "/a/b");
        assert!(contains("/a", "/a/b") && contains("/a", "/a") && contains("/", "/x"));
        assert!(!contains("/a", "/ab"));
    }

    #[test]
    fn data_that_is_not_utf8_is_reported_as_such() {
        let data = vec![b'o', 0xff, b'k'];
        assert_eq!(
            change("/a".into(), Answer::Node { data, children: 0 }),
            Change::NotUtf8 {
                key: "/a".into(),
                fault: crate::store::NotUtf8 {
                    byte: 0xff,
                    offset: 1
                }
            }
        );
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// Paths and prefixes, well formed or not.
    fn path() -> impl Strategy<Value = String> {
        prop_oneof!["(/[a-z]{0,3}){0,4}/?", any::<String>()]
    }

    proptest! {
        #[test]
        fn reads_and_watches_start_within_the_tree(
            prefixes in prop::collection::vec(path(), 0..6),
            events in prop::collection::vec(path(), 0..6),
        ) {
            for (parent, _) in starts(&prefixes) {
                prop_assert!(parent.starts_with('/'));
            }
            let roots = watch_roots(&prefixes);
            for root in &roots {
                prop_assert!(roots.iter().filter(|other| contains(other, root)).count() == 1);
            }
            let touched = touched(
                events.iter().map(|path| (zk::EventType::NodeDeleted, path.as_str())),
                &prefixes,
            );
            prop_assert!(touched.iter().all(|path| is_key(path, &prefixes)));
            for path in &events {
                if let Some(parent) = parent_path(path) {
                    prop_assert!(parent.len() < path.len());
                }
            }
        }

        #[test]
        fn node_data_of_any_bytes_is_a_value(
            data in prop::collection::vec(any::<u8>(), 0..16),
            children in any::<i32>(),
        ) {
            let change = change("/a".to_string(), Answer::Node { data: data.clone(), children });
            match (change, children) {
                (Change::Delete { .. }, children) => prop_assert!(children != 0),
                (Change::Put { value, .. }, 0) => prop_assert_eq!(value.into_bytes(), data),
                (Change::NotUtf8 { fault, .. }, 0) => {
                    prop_assert_eq!(data[fault.offset], fault.byte);
                }
                (other, children) => prop_assert!(false, "{other:?} with {children} children"),
            }
        }
    }
}
