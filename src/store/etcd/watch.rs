//! The etcd watch: one long-lived `/v3/watch` request, with one watcher over the range that
//! covers every prefix.
//!
//! Nothing is missed and nothing is replayed: the watch starts right after the revision up to
//! which a prefix's changes were delivered (kept in [`Client::progress`]), or right after the
//! snapshot's read revision when that is later, and changes a prefix was already given are
//! dropped. A watch refused because etcd compacted that revision, or because etcd is behind it
//! (restored from a backup, rebuilt empty), becomes a full read, reported as a replacement;
//! that read becomes the only progress, and the same stream goes on with the changes right
//! after it.
//!
//! A transaction is delivered whole, as one event. etcd puts every event of one revision that a
//! watcher matches into one message (a watcher catching up gets many revisions in a message,
//! but never part of one, as fragments are not asked for), but each watcher gets messages of
//! its own. With a watcher per prefix, a transaction over two prefixes arrives as two messages
//! and nothing on the stream says when the last share has come: a progress request cannot be
//! sent on a running watch, because the gateway speaks HTTP/1.1 and answers nothing before the
//! request body has ended, and etcd 3.4.23 answers one apart from the queued events, so the
//! answer can overtake them (etcd issue 15220); while catching up, one watcher even sends many
//! revisions before the next one sends its share of the first. Hence one watcher over the range
//! from the first prefix to the end of the last, whose events under no prefix are dropped here.
//! The price: changes to keys between the prefixes travel to reconfd (in a catch-up too) only
//! to be dropped.
//!
//! etcd checks a watch's permission over its whole range, so a user who may read the prefixes
//! but not all that lies between them is refused that watch. Each prefix then gets a watcher of
//! its own, and changes are held for [`SPLIT_MERGE_WINDOW`] to gather the shares of their
//! revisions: a bound that a late share can miss under load, not a guarantee; this is logged.
//!
//! A watch ends, and the daemon opens a new one (on the next node if need be), when its stream
//! breaks, when etcd cancels it (a member losing its leader does, as the request asks), or when
//! the node stops answering the liveness [`Probes`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::{
    BASE64, Client, EtcdError, GatewayError, Header, KeyValue, Order, REQUEST_TIMEOUT,
    RangeResponse, error_chain, int64, prefix_range, range_request,
};
use crate::store::nodes::Node;
use crate::store::watch::{self, Probes, WatchSender};
use crate::store::{Change, Snapshot, WatchStream};

/// With a watcher per prefix (etcd refused the watch over the range covering them all), how
/// long changes wait for the other watchers' share of their revision. etcd sends the shares
/// back to back, yet under load one can come later still: this bounds the wait, it does not
/// make the merge exact. Only that fallback pays it, so it errs on the long side.
const SPLIT_MERGE_WINDOW: Duration = Duration::from_millis(100);

/// Opens the watch of `prefixes` on the first node that accepts it. When etcd cannot serve the
/// changes since the revisions seen (compacted, or restored behind them), the stream starts
/// with a full read, reported as a replacement, and goes on with the changes after that read.
pub(super) async fn start(
    client: Arc<Client>,
    prefixes: &[String],
    snapshot: &Snapshot,
) -> Result<WatchStream, EtcdError> {
    let starts = start_revisions(&client, prefixes, snapshot);
    let ((events, stream), connection) = match open_on_any_node(&client, prefixes, &starts).await? {
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

/// Sends the watch request for `prefixes` from `starts` to each node in turn, as
/// [`Nodes::ask`](crate::store::nodes::Nodes::ask) does, until one accepts it or says it
/// cannot serve those revisions. A node that refuses the one watcher over the range covering
/// every prefix is asked for one watcher per prefix at once.
async fn open_on_any_node(
    client: &Client,
    prefixes: &[String],
    starts: &[Option<i64>],
) -> Result<Opened, EtcdError> {
    client
        .nodes
        .ask(|index, node| open_on(client, index, node, prefixes, starts))
        .await
}

/// Sends the watch request for `prefixes` from `starts` to `node`, the one at `index`.
async fn open_on(
    client: &Client,
    index: usize,
    node: &Node,
    prefixes: &[String],
    starts: &[Option<i64>],
) -> Result<Opened, EtcdError> {
    let mut answer = open_in_time(client, index, node, Request::covering(prefixes, starts)).await;
    if matches!(answer, Ok(Answer::NotPermitted)) {
        if !client.split_watch_told.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "etcd: {node} refuses to watch the range covering every prefix (permission \
                 denied); watching each prefix on its own, so the parts of a transaction \
                 over several prefixes are gathered by waiting {SPLIT_MERGE_WINDOW:?} and \
                 a render may see only part of one under load. Allowing the user to read \
                 from {:?} to the end of {:?} makes this exact",
                prefixes.first().map_or("", String::as_str),
                prefixes.last().map_or("", String::as_str),
            );
        }
        answer = open_in_time(client, index, node, Request::split(prefixes, starts)).await;
    }
    // Only a watch over several prefixes is refused so, and a split one never is.
    let opened = match answer? {
        Answer::Opened(opened) => opened,
        Answer::NotPermitted => {
            return Err(EtcdError::Rejected(format!(
                "{node}: permission denied to watch {}",
                prefixes.join(", ")
            )));
        }
    };
    if let Opened::Watching(connection) = &opened {
        tracing::debug!(
            "etcd: watching {} prefixes on {node} with {} watchers",
            prefixes.len(),
            connection.watchers
        );
    }
    Ok(opened)
}

/// [`open`] within the request time limit.
async fn open_in_time(
    client: &Client,
    index: usize,
    node: &Node,
    request: Request,
) -> Result<Answer, EtcdError> {
    tokio::time::timeout(REQUEST_TIMEOUT, open(client, index, node, request))
        .await
        .unwrap_or_else(|_| {
            Err(EtcdError::Unreachable(format!(
                "{node}: the watch was not set up within {REQUEST_TIMEOUT:?}"
            )))
        })
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
) -> Result<(Snapshot, Option<Connection>), EtcdError> {
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

fn create_request(key: &[u8], range_end: &[u8], start: Option<i64>) -> String {
    let mut request = json!({
        "key": BASE64.encode(key),
        "range_end": BASE64.encode(range_end),
        "progress_notify": true,
    });
    if let Some(start) = start {
        request["start_revision"] = json!(start.to_string());
    }
    json!({ "create_request": request }).to_string()
}

/// The body of one watch request and what its watchers are.
struct Request {
    layout: Layout,
    /// One create request a line.
    body: String,
    /// For each watcher, the latest start among its prefixes: etcd must have reached the
    /// revision before it, which changes were delivered up to.
    latest_starts: Vec<Option<i64>>,
}

impl Request {
    /// One watcher over the range from the first prefix to the end of the last, from the
    /// earliest start; none for no prefix.
    fn covering(prefixes: &[String], starts: &[Option<i64>]) -> Request {
        let wanted: Vec<Wanted> = prefixes
            .iter()
            .zip(starts)
            .map(|(prefix, start)| {
                let (key, end) = prefix_range(prefix);
                Wanted {
                    key,
                    end,
                    from: *start,
                }
            })
            .collect();
        let Some((key, end)) = covering_range(&wanted) else {
            return Request {
                layout: Layout::Covering(wanted),
                body: String::new(),
                latest_starts: Vec::new(),
            };
        };
        let earliest = starts.iter().flatten().min().copied();
        let latest = starts.iter().flatten().max().copied();
        Request {
            layout: Layout::Covering(wanted),
            body: create_request(&key, &end, earliest) + "\n",
            latest_starts: vec![latest],
        }
    }

    /// One watcher per prefix, each from its own start.
    fn split(prefixes: &[String], starts: &[Option<i64>]) -> Request {
        let body = prefixes
            .iter()
            .zip(starts)
            .map(|(prefix, start)| {
                let (key, end) = prefix_range(prefix);
                create_request(&key, &end, *start) + "\n"
            })
            .collect();
        Request {
            layout: Layout::Split,
            body,
            latest_starts: starts.to_vec(),
        }
    }
}

/// The smallest key range holding every one of `prefixes`; `None` for no prefix.
fn covering_range(prefixes: &[Wanted]) -> Option<(Vec<u8>, Vec<u8>)> {
    let key = prefixes.iter().map(|prefix| &prefix.key).min()?.clone();
    // etcd spells "up to the last key" as the range end "\0", which sorts first.
    let end = if prefixes.iter().any(|prefix| prefix.end == [0]) {
        vec![0]
    } else {
        prefixes.iter().map(|prefix| &prefix.end).max()?.clone()
    };
    Some((key, end))
}

/// How the watchers of a watch request map to the prefixes.
enum Layout {
    /// One watcher over the range covering every prefix. A revision's events come in one
    /// message and are delivered at once, less those under no prefix or already delivered.
    Covering(Vec<Wanted>),
    /// One watcher per prefix, in the order of the prefixes. A revision's shares come in
    /// separate messages and are gathered for [`SPLIT_MERGE_WINDOW`].
    Split,
}

/// A watched prefix as etcd's key range, and the revision its changes are wanted from
/// (`None`: whatever the watch sends).
struct Wanted {
    key: Vec<u8>,
    end: Vec<u8>,
    from: Option<i64>,
}

impl Layout {
    /// Whether the change of `key` at `revision` is delivered: it is under a prefix that was
    /// not delivered up to that revision yet.
    fn wants(&self, key: &[u8], revision: i64) -> bool {
        match self {
            Layout::Covering(wanted) => wanted.iter().any(|prefix| {
                key >= prefix.key.as_slice()
                    && (prefix.end == [0] || key < prefix.end.as_slice())
                    && prefix.from.is_none_or(|from| revision >= from)
            }),
            // Each watcher covers one prefix from where that prefix stopped.
            Layout::Split => true,
        }
    }
}

/// A watch request that etcd accepted, or why it has to be preceded by a full read.
enum Opened {
    Watching(Box<Connection>),
    Stale(String),
}

/// What a node answered to one watch request: what any watch can be answered, or that the
/// user may not watch the range covering several prefixes.
enum Answer {
    Opened(Opened),
    NotPermitted,
}

/// Sends the watch request to `node`, the one at `index`, and waits until etcd confirms every
/// watcher.
async fn open(
    client: &Client,
    index: usize,
    node: &Node,
    request: Request,
) -> Result<Answer, EtcdError> {
    let response = client
        .send_to(node, "/v3/watch", &request.body, None)
        .await?;
    let Request {
        layout,
        latest_starts,
        ..
    } = request;
    // Splitting the covering watch only helps when it covers more than one prefix.
    let may_split = matches!(&layout, Layout::Covering(wanted) if wanted.len() > 1);
    let mut connection = Connection {
        index,
        node: node.clone(),
        response,
        buffer: Vec::new(),
        early: VecDeque::new(),
        layout,
        watchers: latest_starts.len(),
    };
    let mut created = 0;
    while created < latest_starts.len() {
        let message = connection
            .read()
            .await
            .map_err(|ended| ended.into_error(client))?;
        if message.canceled {
            if may_split && is_permission_denied(&message.cancel_reason) {
                return Ok(Answer::NotPermitted);
            }
            return cancellation(client, node, &message)
                .map(|reason| Answer::Opened(Opened::Stale(reason)));
        }
        if !message.created {
            // A watcher created first may already be catching up while the next is set up.
            connection.early.push_back(message);
            continue;
        }
        created += 1;
        let start = usize::try_from(message.watch_id)
            .ok()
            .and_then(|index| latest_starts.get(index).copied().flatten());
        if let Some(start) = start
            && message.header.revision + 1 < start
        {
            return Ok(Answer::Opened(Opened::Stale(format!(
                "{node} is at revision {} but changes up to {} were seen (was etcd restored?)",
                message.header.revision,
                start - 1
            ))));
        }
    }
    Ok(Answer::Opened(Opened::Watching(Box::new(connection))))
}

/// What a cancelled watcher means: a full read after a compaction (`Ok`, with the reason), a
/// new login and another node after an authentication failure or a lost leader, an error
/// otherwise.
fn cancellation(
    client: &Client,
    node: &Node,
    message: &WatchResponse,
) -> Result<String, EtcdError> {
    if message.compact_revision > 0 {
        return Ok(format!(
            "revision {} was compacted",
            message.compact_revision
        ));
    }
    let reason = &message.cancel_reason;
    if reason.contains("permission denied") {
        return Err(EtcdError::Auth(format!(
            "{node}: the watch was refused: {reason}"
        )));
    }
    // An expired token: the next attempt logs in again.
    if is_authentication_failure(reason) {
        client.forget_token();
        return Err(EtcdError::Unreachable(format!(
            "{node}: the watch was refused: {reason}"
        )));
    }
    if reason.contains("no leader") {
        return Err(EtcdError::Unreachable(format!("{node}: {reason}")));
    }
    Err(EtcdError::Rejected(format!(
        "{node}: etcd cancelled the watch: {reason}"
    )))
}

fn is_authentication_failure(reason: &str) -> bool {
    [
        "Unauthenticated",
        "invalid auth token",
        "permission denied",
        "user name is empty",
    ]
    .iter()
    .any(|sign| reason.contains(sign))
}

fn is_permission_denied(reason: &str) -> bool {
    reason.contains("PermissionDenied") || reason.contains("permission denied")
}

/// With a watcher per prefix, changes received but not delivered yet, by revision, with the
/// watchers they came from.
#[derive(Default)]
struct Held {
    revisions: BTreeMap<i64, (Vec<Change>, BTreeSet<usize>)>,
    /// When to deliver them: [`SPLIT_MERGE_WINDOW`] after the first of them arrived, whatever
    /// came meanwhile, since a message of a later revision does not mean that every share of
    /// an earlier one is in (a catching-up watcher sends many revisions at once).
    due: Option<Instant>,
}

impl Held {
    fn add(&mut self, revision: i64, changes: Vec<Change>, watcher: usize) {
        let (held, watchers) = self.revisions.entry(revision).or_default();
        held.extend(changes);
        watchers.insert(watcher);
        self.due
            .get_or_insert_with(|| Instant::now() + SPLIT_MERGE_WINDOW);
    }

    /// Queues what is held for the daemon, oldest revision first, and records it as
    /// delivered. False when the daemon stopped listening.
    async fn deliver(
        &mut self,
        client: &Client,
        prefixes: &[String],
        events: &WatchSender,
    ) -> bool {
        self.due = None;
        for (revision, (changes, watchers)) in std::mem::take(&mut self.revisions) {
            if !events.changes(Some(revision), changes).await {
                return false;
            }
            let mut progress = client.progress();
            for watcher in watchers {
                progress.advance(&prefixes[watcher], revision);
            }
        }
        true
    }
}

/// Turns a watch stream's messages into watch events until the stream ends or the daemon
/// stops listening. Changes are recorded as delivered (the next watch starts after them) only
/// once they are queued for the daemon, which applies everything queued.
async fn follow(
    client: Arc<Client>,
    mut connection: Connection,
    prefixes: Vec<String>,
    events: WatchSender,
) {
    let mut held = Held::default();
    let mut probes = Probes::new();
    let ended = loop {
        let due = held.due;
        let message = tokio::select! {
            message = connection.read() => message,
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                if !held.deliver(&client, &prefixes, &events).await {
                    return;
                }
                continue;
            }
            () = probes.due() => {
                if !held.deliver(&client, &prefixes, &events).await {
                    return;
                }
                match probe_node(&client, &connection.node, &prefixes[0]).await {
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
        let message = match message {
            Ok(message) => message,
            Err(ended) => {
                if !held.deliver(&client, &prefixes, &events).await {
                    return;
                }
                break ended.into_error(&client).to_string();
            }
        };
        if message.canceled {
            if !held.deliver(&client, &prefixes, &events).await {
                return;
            }
            match cancellation(&client, &connection.node, &message) {
                Ok(reason) => match read_again(&client, &prefixes, &reason).await {
                    Ok((snapshot, reopened)) => {
                        if !events.replace(snapshot).await {
                            return;
                        }
                        match reopened {
                            Some(reopened) => {
                                connection = reopened;
                                continue;
                            }
                            None => return,
                        }
                    }
                    Err(error) => {
                        events.fail(error.into_store()).await;
                        return;
                    }
                },
                Err(error) => break error.to_string(),
            }
        }
        let Some(watcher) = usize::try_from(message.watch_id)
            .ok()
            .filter(|index| *index < connection.watchers)
        else {
            continue;
        };
        if message.created {
            continue;
        }
        let covering = matches!(connection.layout, Layout::Covering(_));
        if message.events.is_empty() {
            // A progress notification: the watcher has delivered everything in its range up
            // to the header's revision, once what is held has been sent.
            if !held.deliver(&client, &prefixes, &events).await {
                return;
            }
            let revision = message.header.revision;
            if covering {
                client.progress().advance_all(&prefixes, revision);
            } else {
                client.progress().advance(&prefixes[watcher], revision);
            }
            continue;
        }
        let runs = by_revision(&message.events, |key, revision| {
            connection.layout.wants(key, revision)
        });
        for (revision, changes) in runs {
            if covering {
                if !events.changes(Some(revision), changes).await {
                    return;
                }
                // A revision with nothing under the prefixes was delivered too, trivially.
                client.progress().advance_all(&prefixes, revision);
            } else {
                held.add(revision, changes, watcher);
            }
        }
    };
    tracing::info!("etcd: {ended}; watching again");
}

/// A watcher's events grouped by the revision that made them, in order, keeping those whose
/// key and revision `wanted` accepts; a revision none of whose events is kept stays, empty.
/// Events of a key that is not UTF-8 are left out.
fn by_revision(events: &[Event], wanted: impl Fn(&[u8], i64) -> bool) -> Vec<(i64, Vec<Change>)> {
    let mut runs: Vec<(i64, Vec<Change>)> = Vec::new();
    for event in events {
        let revision = event.kv.mod_revision;
        if runs.last().is_none_or(|(last, _)| *last != revision) {
            runs.push((revision, Vec::new()));
        }
        // The key alone decides, so a value under no prefix is never decoded.
        let wanted = BASE64
            .decode(&event.kv.key)
            .is_ok_and(|key| wanted(&key, revision));
        if !wanted {
            continue;
        }
        let Some((key, value)) = event.kv.decode() else {
            continue;
        };
        let change = if event.kind == "DELETE" {
            Change::Delete { key }
        } else {
            Change::Put { key, value }
        };
        if let Some((_, changes)) = runs.last_mut() {
            changes.push(change);
        }
    }
    runs
}

/// Asks `node` for the number of keys under `prefix`: the watch's liveness probe.
async fn probe_node(client: &Client, node: &Node, prefix: &str) -> Result<(), String> {
    let (key, range_end) = prefix_range(prefix);
    let request = range_request(&key, &range_end, 0, Order::CountOnly).to_string();
    Probes::check(
        node,
        client.call_node::<RangeResponse>(node, "/v3/kv/range", &request),
    )
    .await
}

/// The response of a watch request, read message by message.
struct Connection {
    /// The node's index in [`Client::nodes`].
    index: usize,
    node: Node,
    response: reqwest::Response,
    /// Bytes received but not yet a whole message.
    buffer: Vec<u8>,
    /// Messages read while the watch was being set up, handed out first.
    early: VecDeque<WatchResponse>,
    /// How the watchers map to the prefixes.
    layout: Layout,
    /// How many watchers there are; their ids are 0 and up.
    watchers: usize,
}

/// Why a watch stream gave no further message.
enum Ended {
    /// The stream ended, broke, or carried something unreadable.
    Stream(String),
    /// etcd reported an error in the stream.
    Refused(GatewayError, String),
}

impl Ended {
    fn into_error(self, client: &Client) -> EtcdError {
        match self {
            Ended::Stream(reason) => EtcdError::Unreachable(reason),
            Ended::Refused(error, node) => {
                let text = error.text(reqwest::StatusCode::OK);
                let message = format!("{node}: the watch failed: {text}");
                if text.contains("permission denied") {
                    return EtcdError::Auth(message);
                }
                if is_authentication_failure(&text) {
                    client.forget_token();
                }
                EtcdError::Unreachable(message)
            }
        }
    }
}

impl Connection {
    /// The next message. Cancel-safe: bytes are only taken from the response in the poll that
    /// returns them, and a whole line only leaves the buffer when it is returned.
    async fn read(&mut self) -> Result<WatchResponse, Ended> {
        if let Some(message) = self.early.pop_front() {
            return Ok(message);
        }
        loop {
            if let Some(end) = self.buffer.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                // A message that cannot be read could hold a change: the stream ends, and the
                // next watch starts again before it.
                return match serde_json::from_slice::<WatchMessage>(&line) {
                    Ok(WatchMessage::Result(message)) => Ok(message),
                    Ok(WatchMessage::Error(error)) => {
                        Err(Ended::Refused(error, self.node.to_string()))
                    }
                    Err(e) => Err(Ended::Stream(format!(
                        "{}: unreadable watch message: {e}",
                        self.node
                    ))),
                };
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buffer.extend_from_slice(&bytes),
                Ok(None) => {
                    return Err(Ended::Stream(format!(
                        "{}: the watch stream ended",
                        self.node
                    )));
                }
                Err(e) => {
                    return Err(Ended::Stream(format!(
                        "{}: the watch stream broke: {}",
                        self.node,
                        error_chain(&e)
                    )));
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WatchMessage {
    Result(WatchResponse),
    Error(GatewayError),
}

#[derive(Debug, Deserialize)]
struct WatchResponse {
    #[serde(default)]
    header: Header,
    #[serde(default, deserialize_with = "int64")]
    watch_id: i64,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default, deserialize_with = "int64")]
    compact_revision: i64,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(Debug, Deserialize)]
struct Event {
    /// `PUT` is the default and is left out of the JSON.
    #[serde(default, rename = "type")]
    kind: String,
    kv: KeyValue,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::WatchEvent;

    fn parse(line: &str) -> WatchResponse {
        match serde_json::from_str(line).expect("parses") {
            WatchMessage::Result(result) => result,
            WatchMessage::Error(error) => panic!("an error: {error:?}"),
        }
    }

    #[test]
    fn watch_messages_parse_as_the_gateway_writes_them() {
        let result = parse(
            r#"{"result":{"header":{"revision":"4"},"events":[{"type":"DELETE","kv":{"key":"L2EvMQ==","mod_revision":"4"}},{"kv":{"key":"L2EvMg==","mod_revision":"4","value":"dg=="}}]}}"#,
        );
        assert_eq!(result.watch_id, 0, "watch id 0 is left out");
        assert_eq!(
            by_revision(&result.events, |_, _| true),
            [(
                4,
                vec![
                    Change::Delete { key: "/a/1".into() },
                    Change::Put {
                        key: "/a/2".into(),
                        value: "v".into()
                    }
                ]
            )]
        );
        let error = r#"{"error":{"grpc_code":16,"http_code":401,"message":"etcdserver: invalid auth token","http_status":"Unauthorized","code":16}}"#;
        assert!(matches!(
            serde_json::from_str::<WatchMessage>(error),
            Ok(WatchMessage::Error(GatewayError { code: 16, .. }))
        ));
    }

    #[test]
    fn catching_up_events_are_split_by_revision() {
        let result = parse(
            r#"{"result":{"watch_id":"1","events":[{"kv":{"key":"L2EvMQ==","mod_revision":"7","value":"MQ=="}},{"kv":{"key":"L2EvMQ==","mod_revision":"9","value":"Mg=="}},{"kv":{"key":"L2EvMg==","mod_revision":"9","value":"Mw=="}}]}}"#,
        );
        let runs = by_revision(&result.events, |_, _| true);
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].0, runs[0].1.len()), (7, 1));
        assert_eq!((runs[1].0, runs[1].1.len()), (9, 2));
    }

    fn prefixes(list: &[&str]) -> Vec<String> {
        list.iter().map(|prefix| prefix.to_string()).collect()
    }

    fn create_of(body: &str) -> serde_json::Value {
        let line: serde_json::Value = serde_json::from_str(body.trim_end()).expect("JSON");
        line["create_request"].clone()
    }

    #[test]
    fn one_watcher_covers_every_prefix_from_the_earliest_start() {
        let request = Request::covering(&prefixes(&["/a/", "/c/"]), &[Some(9), Some(4)]);
        assert_eq!(request.body.lines().count(), 1);
        let create = create_of(&request.body);
        assert_eq!(create["key"], BASE64.encode("/a/"));
        assert_eq!(create["range_end"], BASE64.encode("/c0"));
        assert_eq!(create["start_revision"], "4");
        // etcd must have reached what /a was given.
        assert_eq!(request.latest_starts, [Some(9)]);

        // A prefix reaching the last key makes the range reach it too.
        let everything = Request::covering(&prefixes(&["", "/a/"]), &[None, None]);
        let create = create_of(&everything.body);
        assert_eq!(create["key"], BASE64.encode([0]));
        assert_eq!(create["range_end"], BASE64.encode([0]));
        assert_eq!(create.get("start_revision"), None);

        let nothing = Request::covering(&[], &[]);
        assert!(nothing.body.is_empty() && nothing.latest_starts.is_empty());

        let split = Request::split(&prefixes(&["/a/", "/c/"]), &[Some(9), Some(4)]);
        assert_eq!(split.body.lines().count(), 2);
        assert_eq!(split.latest_starts, [Some(9), Some(4)]);
    }

    #[test]
    fn the_covering_watcher_keeps_only_changes_under_a_prefix_not_yet_given() {
        let request = Request::covering(&prefixes(&["/a/", "/c/"]), &[Some(9), Some(4)]);
        // Revision 5: /a was given it already, /b is no prefix, /c was not given it. Revision
        // 10: all of it is new, the /b part is still no prefix's. Revision 11: only /b.
        let result = parse(
            r#"{"result":{"events":[{"kv":{"key":"L2EveA==","mod_revision":"5","value":"MQ=="}},{"kv":{"key":"L2IveA==","mod_revision":"5","value":"MQ=="}},{"kv":{"key":"L2MveA==","mod_revision":"5","value":"MQ=="}},{"type":"DELETE","kv":{"key":"L2EveA==","mod_revision":"10"}},{"kv":{"key":"L2IveA==","mod_revision":"10","value":"Mg=="}},{"kv":{"key":"L2MveA==","mod_revision":"10","value":"Mg=="}},{"kv":{"key":"L2IveA==","mod_revision":"11","value":"Mw=="}}]}}"#,
        );
        let runs = by_revision(&result.events, |key, revision| {
            request.layout.wants(key, revision)
        });
        let put = |key: &str, value: &str| Change::Put {
            key: key.into(),
            value: value.into(),
        };
        assert_eq!(
            runs,
            [
                (5, vec![put("/c/x", "1")]),
                (
                    10,
                    vec![Change::Delete { key: "/a/x".into() }, put("/c/x", "2")]
                ),
                (11, vec![]),
            ]
        );
        // Keys next to a prefix are not under it.
        assert!(!request.layout.wants(b"/a", 20));
        assert!(!request.layout.wants(b"/c0", 20));
        assert!(request.layout.wants(b"/c/", 20));
    }

    #[tokio::test]
    async fn split_watchers_catching_up_are_merged_by_revision() {
        let client = Client::new(&crate::store::etcd::EtcdOptions {
            nodes: vec!["http://127.0.0.1:2379".into()],
            ..Default::default()
        })
        .expect("client");
        let prefixes = prefixes(&["/a", "/b"]);
        // Each watcher catching up sends its share of revisions 2 and 3 in one message.
        let a = parse(
            r#"{"result":{"events":[{"kv":{"key":"L2EveA==","mod_revision":"2","value":"MQ=="}},{"kv":{"key":"L2EveA==","mod_revision":"3","value":"Mg=="}}]}}"#,
        );
        let b = parse(
            r#"{"result":{"watch_id":"1","events":[{"kv":{"key":"L2IveA==","mod_revision":"2","value":"MQ=="}},{"kv":{"key":"L2IveA==","mod_revision":"3","value":"Mg=="}}]}}"#,
        );
        let mut held = Held::default();
        for (watcher, message) in [(0, a), (1, b)] {
            for (revision, changes) in by_revision(&message.events, |_, _| true) {
                held.add(revision, changes, watcher);
            }
        }
        assert!(held.due.is_some());
        let (events, mut stream) = watch::channel();
        assert!(held.deliver(&client, &prefixes, &events).await);
        assert!(held.due.is_none() && held.revisions.is_empty());
        for (revision, value) in [(2, "1"), (3, "2")] {
            let put = |key: &str| Change::Put {
                key: key.into(),
                value: value.into(),
            };
            let event = stream.recv().await.expect("an event").expect("changes");
            assert_eq!(
                event,
                WatchEvent::Changes {
                    revision: Some(revision),
                    changes: vec![put("/a/x"), put("/b/x")],
                }
            );
        }
        let snapshot = Snapshot::default();
        assert_eq!(
            start_revisions(&client, &prefixes, &snapshot),
            [Some(4), Some(4)]
        );
    }

    #[test]
    fn a_full_read_behind_the_progress_is_where_the_next_watch_starts() {
        let client = Client::new(&crate::store::etcd::EtcdOptions {
            nodes: vec!["http://127.0.0.1:2379".into()],
            ..Default::default()
        })
        .expect("client");
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
    fn an_authentication_cancel_is_recognised() {
        let cancelled = parse(
            r#"{"result":{"watch_id":"-1","created":true,"canceled":true,"cancel_reason":"rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"}}"#,
        );
        assert!(is_authentication_failure(&cancelled.cancel_reason));
        assert!(!is_authentication_failure("etcdserver: no leader"));
    }
}
