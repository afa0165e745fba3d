//! The etcd watch: one gRPC watch stream, with one watcher over the range that covers every
//! prefix.
//!
//! Nothing is missed and nothing is replayed: the watch starts right after the revision up to
//! which a prefix's changes were delivered (kept in [`Client::progress`]), or right after the
//! snapshot's read revision when that is later, and changes a prefix was already given are
//! dropped. A watch that etcd cannot serve because it compacted that revision, or because it is
//! behind it (restored from a backup, rebuilt empty), becomes a full read, reported as a
//! replacement; that read becomes the only progress, and the watch goes on with the changes
//! right after it. So does a watch resuming after a broken one in a history that is not the
//! one seen (an etcd wiped and written past the old revision meanwhile), which
//! [`history_differs`] finds.
//!
//! A transaction is delivered whole, as one event, with no waiting. etcd puts every event of
//! one revision that a watcher matches into one message (a watcher catching up gets many
//! revisions in a message, but never part of one), so each message's events are delivered
//! grouped by revision. A watcher per prefix would get its own messages, and nothing says when
//! the last watcher's share of a revision has come (etcd 3.4 answers a progress request apart
//! from the queued events, and its gRPC proxy not at all). Hence one watcher over the range
//! from the first prefix to the end of the last, whose events under no prefix are dropped here.
//! The price: changes to keys between the prefixes travel to reconfd only to be dropped.
//!
//! etcd checks a watch's permission over its whole range, so a user who may read the prefixes
//! but not all that lies between them is refused that watch. Each prefix then gets a watcher of
//! its own, and a change seen by any of them is not applied as such: every prefix is read
//! again at one revision and the read replaces the snapshot, so a transaction is still seen
//! whole, at the cost of a read per change; this is logged once.
//!
//! A watch whose watchers are not all created within [`OPEN_DEADLINE`] is given up, logged,
//! and opened again (on the next node if there is one). A watch ends, and the daemon opens a
//! new one, when its stream breaks, when etcd cancels it (a member losing its leader does, as
//! the request asks), or when the node stops answering the liveness [`Probes`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream, SelectAll};

use super::proto::mvccpb;
use super::rpc::{KeyRange, NodeClient, RpcError, WatchMessage, Watcher};
use super::{Client, LastPut, Member, REQUEST_TIMEOUT, decode};
use crate::store::nodes::Node;
use crate::store::watch::{self, Probes, WatchSender};
use crate::store::{Change, Snapshot, StoreError, StoreErrorKind, WatchStream};

/// How long opening a watch may take, every watcher created: as long as one request may. A
/// node that has not set the watch up by then is unlikely to, and waiting longer would hold
/// changes back.
const OPEN_DEADLINE: Duration = REQUEST_TIMEOUT;

/// Opens the watch of `prefixes` on the first node that accepts it. When etcd cannot serve the
/// changes since the revisions seen (compacted, or restored behind them), the stream starts
/// with a full read, reported as a replacement, and goes on with the changes after that read.
pub(super) async fn start(
    client: Arc<Client>,
    prefixes: &[String],
    snapshot: &Snapshot,
) -> Result<WatchStream, StoreError> {
    if prefixes.is_empty() {
        // Nothing to watch: the stream stays open, and quiet, while the daemon holds it.
        let (events, stream) = watch::channel();
        tokio::spawn(async move { events.closed().await });
        return Ok(stream);
    }
    let starts = start_revisions(&client, prefixes, snapshot);
    let opened = open_on_any_node(&client, prefixes, &starts)
        .await
        .inspect_err(|_| client.history_unchecked.store(true, Ordering::Relaxed))?;
    let opened = match opened {
        Opened::Watching(connection) if client.history_unchecked.swap(false, Ordering::Relaxed) => {
            let (node, node_client) = (&connection.node, &connection.client);
            let last_put = client.last_put().clone();
            let differs = history_differs(node, node_client, prefixes, &starts, snapshot, last_put)
                .await
                .inspect_err(|_| client.history_unchecked.store(true, Ordering::Relaxed))?;
            match differs {
                None => Opened::Watching(connection),
                Some(reason) => Opened::Stale(reason),
            }
        }
        stale => stale,
    };
    let ((events, stream), connection) = match opened {
        Opened::Watching(connection) => (watch::channel(), Some(*connection)),
        Opened::Stale(reason) => {
            let (snapshot, connection) = read_again(&client, prefixes, &reason).await?;
            (watch::channel_replacing(snapshot), connection)
        }
    };
    // Without a connection the stream ends after the read, and the daemon watches again.
    if let Some(connection) = connection {
        tokio::spawn(follow(client, connection, prefixes.to_vec(), events));
    }
    Ok(stream)
}

/// Opens the watch of `prefixes` from `starts` on each node in turn, as
/// [`Nodes::ask`](crate::store::nodes::Nodes::ask) does, until one accepts it or says it
/// cannot serve those revisions.
async fn open_on_any_node(
    client: &Client,
    prefixes: &[String],
    starts: &[Option<i64>],
) -> Result<Opened, StoreError> {
    client
        .nodes
        .ask(|index, member| open_on(client, index, member, prefixes, starts))
        .await
}

/// Opens the watch of `prefixes` from `starts` on `member`, the one at `index`: one watcher
/// over the range covering every prefix, or one per prefix when the user may not watch that
/// range.
async fn open_on(
    client: &Client,
    index: usize,
    member: &Member,
    prefixes: &[String],
    starts: &[Option<i64>],
) -> Result<Opened, StoreError> {
    let node_client = member.client(&client.connect).await?;
    let node = &member.node;
    let mut opened =
        open_in_time(&node_client, index, node, Plan::covering(prefixes, starts)).await;
    if prefixes.len() > 1 && opened.as_ref().is_err_and(is_permission_denied) {
        if !client.split_watch_told.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "etcd: {node} refuses to watch the range covering every prefix (permission \
                 denied); watching each prefix on its own, and reading every prefix again at \
                 each change so that a transaction over several prefixes is still seen whole. \
                 Allowing the user to read from {:?} to the end of {:?} saves those reads",
                prefixes.first().map_or("", String::as_str),
                prefixes.last().map_or("", String::as_str),
            );
        }
        opened = open_in_time(&node_client, index, node, Plan::split(prefixes, starts)).await;
    }
    let opened = opened?;
    if let Opened::Watching(connection) = &opened {
        tracing::debug!(
            "etcd: watching {} {} on {node} with {} {}",
            prefixes.len(),
            crate::plan::plural(prefixes.len(), "prefix", "prefixes"),
            connection.watchers,
            crate::plan::plural(connection.watchers, "watcher", "watchers")
        );
    }
    Ok(opened)
}

/// True for etcd's refusal of a watcher because the user may not read all of its range.
fn is_permission_denied(error: &StoreError) -> bool {
    error.kind() == StoreErrorKind::Auth && error.to_string().contains("permission denied")
}

/// [`open`] within [`OPEN_DEADLINE`]; a watch not set up by then is torn down (its watchers
/// dropped) and reported as a node out of reach, so that it is opened again.
async fn open_in_time(
    node_client: &Arc<NodeClient>,
    index: usize,
    node: &Node,
    plan: Plan,
) -> Result<Opened, StoreError> {
    match tokio::time::timeout(OPEN_DEADLINE, open(node_client, index, node, plan)).await {
        Ok(opened) => opened,
        Err(_) => {
            tracing::warn!(
                "etcd: {node}: the watch was not set up within {OPEN_DEADLINE:?}; opening it again"
            );
            Err(StoreError::unreachable(format!(
                "etcd: {node}: the watch was not set up within {OPEN_DEADLINE:?}"
            )))
        }
    }
}

/// Creates the watchers of `plan` on `node`, the one at `index`, each on a stream of its own,
/// and checks that etcd has reached the revisions already delivered.
async fn open(
    node_client: &Arc<NodeClient>,
    index: usize,
    node: &Node,
    plan: Plan,
) -> Result<Opened, StoreError> {
    let watchers = futures_util::future::try_join_all(
        plan.watchers
            .iter()
            .map(|planned| node_client.watch(&planned.range, planned.start.unwrap_or(0), true)),
    )
    .await?;
    for (watcher, planned) in watchers.iter().zip(&plan.watchers) {
        // etcd's gRPC proxy may leave the revision out (0): nothing to compare then.
        let created = watcher.created_revision();
        if let Some(latest) = planned.latest_start
            && created > 0
            && created + 1 < latest
        {
            return Ok(Opened::Stale(format!(
                "{node} is at revision {created} but changes up to {} were seen (was etcd \
                 restored?)",
                latest - 1
            )));
        }
    }
    let watcher_count = watchers.len();
    let messages = stream::select_all(
        watchers
            .into_iter()
            .enumerate()
            .map(|(number, watcher)| messages(number, watcher)),
    );
    Ok(Opened::Watching(Box::new(Connection {
        index,
        node: node.clone(),
        client: Arc::clone(node_client),
        messages,
        layout: plan.layout,
        watchers: watcher_count,
    })))
}

/// Why etcd's history is not the one the watch resumes in, if it is not. An etcd rebuilt
/// empty and written past the revisions seen before (a wiped member filled again by a script
/// before reconfd came back) passes the revision check of [`open`]; without these checks the
/// watch would resume in the middle of a history it never saw, missing keys and keeping
/// deleted ones until the next resync. At the latest revision delivered, the key last put must
/// still carry the revision of that put; and at the revision up to which each prefix's changes
/// were delivered, etcd must hold as many keys under it as the snapshot does (`snapshot`
/// holds every change of each prefix up to the revision before its start). A request per
/// prefix and one more, answered from etcd's index, when a watch resumes after a broken one.
async fn history_differs(
    node: &Node,
    node_client: &NodeClient,
    prefixes: &[String],
    starts: &[Option<i64>],
    snapshot: &Snapshot,
    last_put: Option<LastPut>,
) -> Result<Option<String>, StoreError> {
    let delivered = starts.iter().flatten().max().map(|start| start - 1);
    if let (Some(last_put), Some(delivered)) = (last_put, delivered.filter(|at| *at > 0)) {
        let key = KeyRange {
            key: last_put.key.clone(),
            range_end: Vec::new(),
        };
        let found = match node_client.range_pages(&key, delivered, 0).next().await {
            Ok(page) => page.into_iter().flatten().next().map(|kv| kv.mod_revision),
            Err(RpcError::Compacted) => {
                return Ok(Some(format!("{node} compacted revision {delivered}")));
            }
            Err(RpcError::Store(error)) => return Err(error),
        };
        if found != Some(last_put.revision) {
            return Ok(Some(format!(
                "{node} does not have {} as put at revision {} (was etcd rebuilt?)",
                String::from_utf8_lossy(&last_put.key),
                last_put.revision
            )));
        }
    }
    let counts = prefixes
        .iter()
        .zip(starts)
        .filter_map(|(prefix, start)| Some((prefix, start.filter(|start| *start > 1)? - 1)))
        .map(|(prefix, revision)| async move {
            let range = KeyRange::prefix(prefix.as_bytes());
            (prefix, revision, node_client.count(&range, revision).await)
        });
    for (prefix, revision, counted) in futures_util::future::join_all(counts).await {
        // etcd counts by string prefix, as it reads.
        let held = snapshot.count_starting_with(prefix)
            + snapshot
                .not_utf8
                .keys()
                .filter(|key| crate::store::under_prefix(key, prefix))
                .count();
        match counted {
            Ok(counted) if usize::try_from(counted.count) == Ok(held) => {}
            Ok(counted) => {
                return Ok(Some(format!(
                    "{node} holds {} keys under {prefix} at revision {revision}, where {held} were \
                     seen (was etcd rebuilt?)",
                    counted.count
                )));
            }
            Err(RpcError::Compacted) => {
                return Ok(Some(format!("{node} compacted revision {revision}")));
            }
            Err(RpcError::Store(error)) => return Err(error),
        }
    }
    Ok(None)
}

/// Reads every key again because of `reason`, and opens the watch right after that read.
///
/// The read replaces whatever was seen before, so the revisions recorded as delivered are
/// forgotten: an etcd restored or rebuilt behind them would otherwise refuse every later
/// watch as stale, and everything would be read again and again until its revision caught
/// up. The connection is `None` when the watch could not be opened after the read; the
/// daemon then watches again from the read.
async fn read_again(
    client: &Client,
    prefixes: &[String],
    reason: &str,
) -> Result<(Snapshot, Option<Connection>), StoreError> {
    tracing::info!("etcd: {reason}; reading every key again");
    let snapshot = client.fetch(prefixes).await?;
    client.progress().restart(prefixes, snapshot.revision);
    let starts = start_revisions(client, prefixes, &snapshot);
    let connection = match open_on_any_node(client, prefixes, &starts).await {
        Ok(Opened::Watching(connection)) => {
            if let Some(revision) = snapshot.revision {
                tracing::info!(
                    "etcd: read every key at revision {revision}; watching from there on {}",
                    connection.node
                );
            }
            Some(*connection)
        }
        // etcd moved again between the read and the watch (another compaction, another
        // restore): the next watch finds out what to do.
        Ok(Opened::Stale(reason)) => {
            tracing::info!("etcd: {reason} right after reading every key");
            None
        }
        Err(error) => {
            tracing::info!("etcd: read every key but cannot watch yet: {error}");
            None
        }
    };
    Ok((snapshot, connection))
}

/// Where each prefix's watch starts: after the changes already delivered for it, or after
/// the snapshot's read when that is later. `None` (start now) only for a snapshot without a
/// revision and a prefix never watched, which a fetch from etcd never gives.
fn start_revisions(client: &Client, prefixes: &[String], snapshot: &Snapshot) -> Vec<Option<i64>> {
    let progress = client.progress();
    prefixes
        .iter()
        .map(|prefix| progress.start(prefix, snapshot.revision))
        .collect()
}

/// The watchers to create and how their events map to the prefixes.
struct Plan {
    layout: Layout,
    watchers: Vec<PlannedWatcher>,
}

/// One watcher to create.
struct PlannedWatcher {
    range: KeyRange,
    /// The revision its changes start at; `None`: changes after the current one.
    start: Option<i64>,
    /// The latest start among its prefixes: etcd must have reached the revision before it,
    /// which changes were delivered up to.
    latest_start: Option<i64>,
}

impl Plan {
    /// One watcher over the range from the first prefix to the end of the last, from the
    /// earliest start. `prefixes` is not empty.
    fn covering(prefixes: &[String], starts: &[Option<i64>]) -> Plan {
        let wanted: Vec<Wanted> = prefixes
            .iter()
            .zip(starts)
            .map(|(prefix, start)| Wanted {
                range: KeyRange::prefix(prefix.as_bytes()),
                from: *start,
            })
            .collect();
        let watchers = covering_range(&wanted)
            .map(|range| PlannedWatcher {
                range,
                start: starts.iter().flatten().min().copied(),
                latest_start: starts.iter().flatten().max().copied(),
            })
            .into_iter()
            .collect();
        Plan {
            layout: Layout::Covering(wanted),
            watchers,
        }
    }

    /// One watcher per prefix, each from its own start.
    fn split(prefixes: &[String], starts: &[Option<i64>]) -> Plan {
        let watchers = prefixes
            .iter()
            .zip(starts)
            .map(|(prefix, start)| PlannedWatcher {
                range: KeyRange::prefix(prefix.as_bytes()),
                start: *start,
                latest_start: *start,
            })
            .collect();
        Plan {
            layout: Layout::Split,
            watchers,
        }
    }
}

/// The smallest key range holding every one of `prefixes`; `None` for no prefix.
fn covering_range(prefixes: &[Wanted]) -> Option<KeyRange> {
    let key = prefixes
        .iter()
        .map(|prefix| &prefix.range.key)
        .min()?
        .clone();
    // etcd spells "up to the last key" as the range end "\0", which sorts first.
    let range_end = if prefixes.iter().any(|prefix| prefix.range.range_end == [0]) {
        vec![0]
    } else {
        prefixes
            .iter()
            .map(|prefix| &prefix.range.range_end)
            .max()?
            .clone()
    };
    Some(KeyRange { key, range_end })
}

/// How the watchers of a watch map to the prefixes.
enum Layout {
    /// One watcher over the range covering every prefix. A revision's events come in one
    /// message and are delivered at once, less those under no prefix or already delivered.
    Covering(Vec<Wanted>),
    /// One watcher per prefix, in the order of the prefixes. A change makes every prefix be
    /// read again.
    Split,
}

/// A watched prefix as etcd's key range, and the revision its changes are wanted from
/// (`None`: whatever the watch sends).
struct Wanted {
    range: KeyRange,
    from: Option<i64>,
}

/// Whether the change of `key` at `revision` is delivered: it is under one of `wanted` that
/// was not delivered up to that revision yet.
fn wants(wanted: &[Wanted], key: &[u8], revision: i64) -> bool {
    wanted.iter().any(|prefix| {
        key >= prefix.range.key.as_slice()
            && (prefix.range.range_end == [0] || key < prefix.range.range_end.as_slice())
            && prefix.from.is_none_or(|from| revision >= from)
    })
}

/// A watch etcd accepted, or why it has to be preceded by a full read.
enum Opened {
    Watching(Box<Connection>),
    Stale(String),
}

/// What one watcher reported, with its number: a message, the end of its stream (`None`), or
/// why it failed.
type Report = (usize, Result<Option<WatchMessage>, StoreError>);

/// The messages of watcher `number`, ending after its stream ended or failed.
fn messages(number: usize, watcher: Watcher) -> BoxStream<'static, Report> {
    stream::unfold(Some(watcher), move |watcher| async move {
        let mut watcher = watcher?;
        let message = watcher.next().await;
        let going_on = matches!(message, Ok(Some(_)));
        Some(((number, message), going_on.then_some(watcher)))
    })
    .boxed()
}

/// The watchers of one watch, on one node, and what their messages mean.
struct Connection {
    /// The node's index in [`Client::nodes`].
    index: usize,
    node: Node,
    client: Arc<NodeClient>,
    /// Every watcher's messages as they come.
    messages: SelectAll<BoxStream<'static, Report>>,
    layout: Layout,
    watchers: usize,
}

/// Turns a watch's messages into watch events until a stream ends or the daemon stops
/// listening. Changes are recorded as delivered (the next watch starts after them) only once
/// they are queued for the daemon, which applies everything queued.
async fn follow(
    client: Arc<Client>,
    mut connection: Connection,
    prefixes: Vec<String>,
    events: WatchSender,
) {
    let mut probes = Probes::new();
    let probed = KeyRange::prefix(prefixes[0].as_bytes());
    let ended = loop {
        let report = tokio::select! {
            report = connection.messages.next() => report,
            () = probes.due() => {
                let probe = connection.client.count(&probed, 0);
                match Probes::check(&connection.node, probe).await {
                    Ok(()) => continue,
                    Err(reason) => {
                        // The next watch starts on another node rather than waiting for this
                        // one to time out again.
                        client.nodes.avoid(connection.index);
                        break reason;
                    }
                }
            }
            () = events.closed() => return,
        };
        let (watcher, message) = match report {
            Some((watcher, Ok(Some(message)))) => (watcher, message),
            Some((_, Ok(None))) | None => {
                break format!("{}: the watch stream ended", connection.node);
            }
            // The reason is logged after `etcd: ` below.
            Some((_, Err(error))) => {
                let error = error.to_string();
                break error
                    .strip_prefix("etcd: ")
                    .map_or(error.clone(), str::to_string);
            }
        };
        match message {
            WatchMessage::Compacted { compact_revision } => {
                let reason = format!("revision {compact_revision} was compacted");
                match read_again(&client, &prefixes, &reason).await {
                    Ok((snapshot, reopened)) => {
                        if !events.replace(snapshot).await {
                            return;
                        }
                        match reopened {
                            Some(reopened) => connection = reopened,
                            None => return,
                        }
                    }
                    Err(error) => {
                        events.fail(error).await;
                        return;
                    }
                }
            }
            // No progress request is ever sent, so this is etcd's periodic notification,
            // which it sends only to a watcher that has delivered everything up to it.
            WatchMessage::Progress { revision } => match connection.layout {
                Layout::Covering(_) => client.progress().advance_all(&prefixes, revision),
                Layout::Split => client.progress().advance(&prefixes[watcher], revision),
            },
            WatchMessage::Events {
                revision,
                events: changes,
            } => match &connection.layout {
                Layout::Covering(wanted) => {
                    let runs = by_revision(changes, |key, revision| wants(wanted, key, revision));
                    for (revision, changes) in runs {
                        note_last_put(&client, revision, &changes);
                        if !events.changes(Some(revision), changes).await {
                            return;
                        }
                        // A revision with nothing under the prefixes was delivered too,
                        // trivially.
                        client.progress().advance_all(&prefixes, revision);
                    }
                }
                Layout::Split => {
                    // The message's revision is at least its last event's: a message whose
                    // changes the last read may already hold is read for once more, harmlessly.
                    let unseen = client
                        .progress()
                        .start(&prefixes[watcher], None)
                        .is_none_or(|start| revision >= start);
                    if unseen && !read_everything(&client, &prefixes, &events).await {
                        break format!(
                            "{}: a change came but every key could not be read",
                            connection.node
                        );
                    }
                }
            },
        }
    };
    client.history_unchecked.store(true, Ordering::Relaxed);
    tracing::info!("etcd: {ended}; watching again");
}

/// With a watcher per prefix, reads every prefix at one revision and queues the read as a
/// replacement, which holds every part of the transactions up to it. False when the read
/// failed or the daemon stopped listening.
async fn read_everything(client: &Client, prefixes: &[String], events: &WatchSender) -> bool {
    let snapshot = match client.fetch(prefixes).await {
        Ok(snapshot) => snapshot,
        Err(error) => {
            tracing::info!("etcd: {error}");
            return false;
        }
    };
    let revision = snapshot.revision;
    if !events.replace(snapshot).await {
        return false;
    }
    if let Some(revision) = revision {
        client.progress().advance_all(prefixes, revision);
    }
    true
}

/// Keeps [`Client::last_put`] up to date with the `changes` of `revision`: its last put, or
/// none once that key is deleted.
fn note_last_put(client: &Client, revision: i64, changes: &[Change]) {
    let mut last_put = client.last_put();
    for change in changes {
        match change {
            Change::Put { key, .. } | Change::NotUtf8 { key, .. } => {
                *last_put = Some(LastPut {
                    key: key.as_bytes().to_vec(),
                    revision,
                });
            }
            Change::Delete { key } => {
                if last_put
                    .as_ref()
                    .is_some_and(|last| last.key == key.as_bytes())
                {
                    *last_put = None;
                }
            }
        }
    }
}

/// A watcher's events grouped by the revision that made them, in order, keeping those whose
/// key and revision `wanted` accepts; a revision none of whose events is kept stays, empty.
/// Events of a key that is not UTF-8 are left out.
fn by_revision(
    events: Vec<mvccpb::Event>,
    wanted: impl Fn(&[u8], i64) -> bool,
) -> Vec<(i64, Vec<Change>)> {
    let mut runs: Vec<(i64, Vec<Change>)> = Vec::new();
    for event in events {
        let Some(kv) = event.kv else {
            continue;
        };
        let revision = kv.mod_revision;
        if runs.last().is_none_or(|(last, _)| *last != revision) {
            runs.push((revision, Vec::new()));
        }
        // The key alone decides, so a value under no prefix is never decoded.
        if !wanted(&kv.key, revision) {
            continue;
        }
        let Some((key, value)) = decode(kv) else {
            continue;
        };
        let change = if event.r#type == mvccpb::event::EventType::Delete as i32 {
            Change::Delete { key }
        } else {
            Change::put(key, value)
        };
        if let Some((_, changes)) = runs.last_mut() {
            changes.push(change);
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(list: &[&str]) -> Vec<String> {
        list.iter().map(|prefix| prefix.to_string()).collect()
    }

    fn event(
        kind: mvccpb::event::EventType,
        key: &str,
        value: &str,
        revision: i64,
    ) -> mvccpb::Event {
        mvccpb::Event {
            r#type: kind as i32,
            kv: Some(mvccpb::KeyValue {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                mod_revision: revision,
                ..mvccpb::KeyValue::default()
            }),
            ..mvccpb::Event::default()
        }
    }

    fn put(key: &str, value: &str, revision: i64) -> mvccpb::Event {
        event(mvccpb::event::EventType::Put, key, value, revision)
    }

    fn client() -> Client {
        Client::new(&crate::store::etcd::EtcdOptions {
            nodes: vec!["http://127.0.0.1:2379".into()],
            ..Default::default()
        })
        .expect("client")
    }

    #[test]
    fn catching_up_events_are_split_by_revision() {
        let events = [
            put("/a/1", "1", 7),
            put("/a/1", "2", 9),
            put("/a/2", "3", 9),
        ];
        let runs = by_revision(events.to_vec(), |_, _| true);
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].0, runs[0].1.len()), (7, 1));
        assert_eq!((runs[1].0, runs[1].1.len()), (9, 2));
    }

    #[test]
    fn one_watcher_covers_every_prefix_from_the_earliest_start() {
        let plan = Plan::covering(&prefixes(&["/a/", "/c/"]), &[Some(9), Some(4)]);
        assert_eq!(plan.watchers.len(), 1);
        let watcher = &plan.watchers[0];
        assert_eq!(watcher.range.key, b"/a/");
        assert_eq!(watcher.range.range_end, b"/c0");
        assert_eq!(watcher.start, Some(4));
        // etcd must have reached what /a was given.
        assert_eq!(watcher.latest_start, Some(9));

        // A prefix reaching the last key makes the range reach it too.
        let everything = Plan::covering(&prefixes(&["", "/a/"]), &[None, None]);
        let watcher = &everything.watchers[0];
        assert_eq!(
            (
                watcher.range.key.as_slice(),
                watcher.range.range_end.as_slice()
            ),
            (&[0u8][..], &[0u8][..])
        );
        assert_eq!(watcher.start, None);

        let split = Plan::split(&prefixes(&["/a/", "/c/"]), &[Some(9), Some(4)]);
        let starts: Vec<_> = split.watchers.iter().map(|watcher| watcher.start).collect();
        assert_eq!(starts, [Some(9), Some(4)]);
    }

    #[test]
    fn the_covering_watcher_keeps_only_changes_under_a_prefix_not_yet_given() {
        let plan = Plan::covering(&prefixes(&["/a/", "/c/"]), &[Some(9), Some(4)]);
        let Layout::Covering(wanted) = &plan.layout else {
            panic!("one covering watcher");
        };
        // Revision 5: /a was given it already, /b is no prefix, /c was not given it. Revision
        // 10: all of it is new, the /b part is still no prefix's. Revision 11: only /b.
        let events = [
            put("/a/x", "1", 5),
            put("/b/x", "1", 5),
            put("/c/x", "1", 5),
            event(mvccpb::event::EventType::Delete, "/a/x", "", 10),
            put("/b/x", "2", 10),
            put("/c/x", "2", 10),
            put("/b/x", "3", 11),
        ];
        let runs = by_revision(events.to_vec(), |key, revision| {
            wants(wanted, key, revision)
        });
        let change = |key: &str, value: &str| Change::Put {
            key: key.into(),
            value: value.into(),
        };
        assert_eq!(
            runs,
            [
                (5, vec![change("/c/x", "1")]),
                (
                    10,
                    vec![Change::Delete { key: "/a/x".into() }, change("/c/x", "2")]
                ),
                (11, vec![]),
            ]
        );
        // Keys next to a prefix are not under it.
        assert!(!wants(wanted, b"/a", 20));
        assert!(!wants(wanted, b"/c0", 20));
        assert!(wants(wanted, b"/c/", 20));
    }

    #[test]
    fn a_full_read_behind_the_progress_is_where_the_next_watch_starts() {
        let client = client();
        let prefixes = ["/a".to_string(), "/b".to_string()];
        client.progress().advance("/a", 612);
        client.progress().advance("/gone", 700);
        let old = Snapshot {
            revision: Some(500),
            ..Snapshot::default()
        };
        assert_eq!(
            start_revisions(&client, &prefixes, &old),
            [Some(613), Some(501)]
        );
        // etcd rebuilt: the read at revision 3 is all that counts now.
        let read = Snapshot {
            revision: Some(3),
            ..Snapshot::default()
        };
        client.progress().restart(&prefixes, read.revision);
        assert_eq!(
            start_revisions(&client, &prefixes, &read),
            [Some(4), Some(4)]
        );
        assert_eq!(
            start_revisions(&client, &["/gone".to_string()], &read),
            [Some(4)]
        );
        // Within the new history, progress grows again.
        client.progress().advance("/a", 9);
        client.progress().advance("/a", 5);
        assert_eq!(
            start_revisions(&client, &prefixes, &read),
            [Some(10), Some(4)]
        );
    }

    #[test]
    fn a_refused_range_is_told_from_refused_credentials() {
        assert!(is_permission_denied(&StoreError::auth(
            "etcd: n: watch: etcdserver: permission denied"
        )));
        assert!(!is_permission_denied(&StoreError::auth(
            "etcd: n: etcd refused user `u`: authentication failed"
        )));
        assert!(!is_permission_denied(&StoreError::rejected(
            "permission denied"
        )));
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// Keys over a small alphabet with the bytes where ranges turn over (0x00, 0xfe, 0xff).
    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::sample::select(&[b'/', b'a', 0x00, 0xfe, 0xff][..]),
            0..5,
        )
    }

    proptest! {
        #[test]
        fn a_prefix_range_holds_exactly_the_keys_starting_with_it(
            prefix in key(),
            other in key(),
        ) {
            let wanted = [Wanted { range: KeyRange::prefix(&prefix), from: None }];
            let mut under = prefix.clone();
            under.extend_from_slice(&other);
            // etcd has no empty key.
            prop_assume!(!under.is_empty());
            prop_assert!(wants(&wanted, &under, 1));
            if !prefix.is_empty() {
                prop_assert_eq!(wants(&wanted, &other, 1), other.starts_with(&prefix));
            }
            let covering = covering_range(&wanted).expect("one prefix");
            let all = [Wanted { range: covering, from: None }];
            prop_assert!(wants(&all, &under, 1));
        }

        #[test]
        fn events_of_any_bytes_become_changes_or_are_left_out(
            events in prop::collection::vec((key(), key(), any::<bool>(), 1i64..4), 0..12)
        ) {
            let events: Vec<mvccpb::Event> = events
                .into_iter()
                .map(|(key, value, delete, revision)| mvccpb::Event {
                    r#type: if delete {
                        mvccpb::event::EventType::Delete as i32
                    } else {
                        mvccpb::event::EventType::Put as i32
                    },
                    kv: Some(mvccpb::KeyValue {
                        key,
                        value,
                        mod_revision: revision,
                        ..mvccpb::KeyValue::default()
                    }),
                    ..mvccpb::Event::default()
                })
                .collect();
            let runs = by_revision(events.clone(), |_, _| true);
            let named = events
                .iter()
                .filter_map(|event| event.kv.as_ref())
                .filter(|kv| std::str::from_utf8(&kv.key).is_ok())
                .count();
            prop_assert_eq!(runs.iter().map(|(_, changes)| changes.len()).sum::<usize>(), named);
        }
    }
}
