//! The etcd watch: one long-lived `/v3/watch` request carrying one watcher per prefix.
//!
//! Nothing is missed and nothing is replayed: each watcher starts right after the revision up
//! to which its prefix's changes were delivered (kept in [`Client::progress`]), or right after
//! the snapshot's read revision when that is later. A watch refused because etcd compacted
//! that revision, or because etcd is behind it (restored from a backup, rebuilt empty),
//! becomes a full read, reported as a replacement; that read becomes the only progress, and
//! the same stream goes on with the changes right after it.
//!
//! A transaction that touches several prefixes reaches their watchers as separate messages of
//! one revision; with more than one watcher, changes are held for [`MERGE_WINDOW`] to gather
//! the rest of their revision, so no render sees half a transaction.
//!
//! A watch ends, and the daemon opens a new one (on the next node if need be), when its stream
//! breaks, when etcd cancels it (a member losing its leader does, as the request asks), or when
//! the node stops answering the probe sent every [`PROBE_INTERVAL`].

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    BASE64, Client, EtcdError, GatewayError, Header, KeyValue, Order, REQUEST_TIMEOUT,
    RangeResponse, error_chain, int64, no_node_answered, prefix_range, range_request,
};
use crate::store::{Change, Snapshot, StoreError, WatchEvent, WatchStream};

/// Watch events buffered for the daemon. The daemon drains whatever is queued before it
/// renders, so the buffer only needs to absorb a burst.
const WATCH_CAPACITY: usize = 256;

/// How long changes of one revision wait for the other watchers' share of the same revision.
/// etcd sends them back to back; this only bounds the wait.
const MERGE_WINDOW: Duration = Duration::from_millis(5);

/// How often the watched node is asked whether it still answers: a node that accepts
/// connections but no longer serves (stopped, wedged) would otherwise hold the watch silently.
const PROBE_INTERVAL: Duration = Duration::from_secs(20);

/// How long the probe waits; etcd answers it in about a millisecond.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the watch of `prefixes` on the first node that accepts it. When etcd cannot serve the
/// changes since the revisions seen (compacted, or restored behind them), the stream starts
/// with a full read, reported as a replacement, and goes on with the changes after that read.
pub(super) async fn start(
    client: Arc<Client>,
    prefixes: &[String],
    snapshot: &Snapshot,
) -> Result<WatchStream, EtcdError> {
    let starts = start_revisions(&client, prefixes, snapshot);
    let (events, stream) = mpsc::channel(WATCH_CAPACITY);
    let connection = match open_on_any_node(&client, prefixes, &starts).await? {
        Opened::Watching(connection) => Some(connection),
        Opened::Stale(reason) => {
            let (snapshot, connection) = read_again(&client, prefixes, &reason).await?;
            // The channel is new and has room for this one event.
            let _ = events.try_send(Ok(WatchEvent::Replace(snapshot)));
            connection
        }
    };
    // Without a connection the stream ends after the read, and the daemon watches again.
    if let Some(connection) = connection {
        tokio::spawn(follow(client, connection, prefixes.to_vec(), events));
    }
    Ok(stream)
}

/// Sends the watch request for `prefixes` from `starts` to each node in turn, from the
/// preferred one, until one accepts it or says it cannot serve those revisions.
async fn open_on_any_node(
    client: &Client,
    prefixes: &[String],
    starts: &[Option<i64>],
) -> Result<Opened, EtcdError> {
    let requests: String = prefixes
        .iter()
        .zip(starts)
        .map(|(prefix, start)| create_request(prefix, *start) + "\n")
        .collect();
    let mut failures = Vec::new();
    let nodes: Vec<(usize, String)> = client
        .nodes_from_preferred()
        .map(|(index, node)| (index, node.clone()))
        .collect();
    for (index, node) in nodes {
        let node = node.as_str();
        let opened = tokio::time::timeout(REQUEST_TIMEOUT, open(client, node, &requests, starts))
            .await
            .unwrap_or_else(|_| {
                Err(EtcdError::Unreachable(format!(
                    "{node}: the watch was not set up within {REQUEST_TIMEOUT:?}"
                )))
            });
        match opened {
            Ok(Opened::Watching(connection)) => {
                client.preferred.store(index, Ordering::Relaxed);
                tracing::debug!("etcd: watching {} prefixes on {node}", prefixes.len());
                return Ok(Opened::Watching(connection));
            }
            Ok(stale @ Opened::Stale(_)) => return Ok(stale),
            Err(EtcdError::Unreachable(message)) => failures.push(message),
            Err(other) => return Err(other),
        }
    }
    Err(no_node_answered(&failures))
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
    restart_progress(client, prefixes, snapshot.revision);
    let starts = start_revisions(client, prefixes, &snapshot);
    let connection = match open_on_any_node(client, prefixes, &starts).await {
        Ok(Opened::Watching(connection)) => {
            if let Some(revision) = snapshot.revision {
                tracing::info!(
                    "etcd: read every key at revision {revision}; watching from there on {}",
                    connection.node
                );
            }
            Some(connection)
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

/// Where each prefix's watcher starts: after the changes already delivered for it, or after
/// the snapshot's read when that is later. `None` (start now) only for a snapshot without a
/// revision and a prefix never watched, which a fetch from etcd never gives.
fn start_revisions(client: &Client, prefixes: &[String], snapshot: &Snapshot) -> Vec<Option<i64>> {
    let progress = client.progress.lock().unwrap_or_else(|e| e.into_inner());
    prefixes
        .iter()
        .map(|prefix| {
            progress
                .get(prefix)
                .copied()
                .max(snapshot.revision)
                .map(|seen| seen + 1)
        })
        .collect()
}

fn create_request(prefix: &str, start: Option<i64>) -> String {
    let (key, range_end) = prefix_range(prefix);
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

/// A watch request that etcd accepted, or why it has to be preceded by a full read.
enum Opened {
    Watching(Connection),
    Stale(String),
}

/// Sends the create requests to `node` and waits until etcd confirms every watcher.
async fn open(
    client: &Client,
    node: &str,
    requests: &str,
    starts: &[Option<i64>],
) -> Result<Opened, EtcdError> {
    let response = client.send_to(node, "/v3/watch", requests, None).await?;
    let mut connection = Connection {
        node: node.to_string(),
        response,
        buffer: Vec::new(),
        early: VecDeque::new(),
    };
    let mut created = 0;
    while created < starts.len() {
        let message = connection
            .read()
            .await
            .map_err(|ended| ended.into_error(client))?;
        if message.canceled {
            return cancellation(client, node, &message);
        }
        if !message.created {
            // A watcher created first may already be catching up while the next is set up.
            connection.early.push_back(message);
            continue;
        }
        created += 1;
        let start = usize::try_from(message.watch_id)
            .ok()
            .and_then(|index| starts.get(index).copied().flatten());
        if let Some(start) = start
            && message.header.revision + 1 < start
        {
            return Ok(Opened::Stale(format!(
                "{node} is at revision {} but changes up to {} were seen (was etcd restored?)",
                message.header.revision,
                start - 1
            )));
        }
    }
    Ok(Opened::Watching(connection))
}

/// What a cancelled watcher means: a full read after a compaction, a new login and another
/// node after an authentication failure or a lost leader, an error otherwise.
fn cancellation(client: &Client, node: &str, message: &WatchResponse) -> Result<Opened, EtcdError> {
    if message.compact_revision > 0 {
        return Ok(Opened::Stale(format!(
            "revision {} was compacted",
            message.compact_revision
        )));
    }
    let reason = &message.cancel_reason;
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

/// Changes of one revision not sent yet, and the watchers they came from.
struct Pending {
    revision: i64,
    changes: Vec<Change>,
    watchers: BTreeSet<usize>,
    /// When to send them even if no other message came.
    due: Instant,
}

/// Turns a watch stream's messages into watch events until the stream ends or the daemon
/// stops listening. Changes are recorded as delivered (the next watch starts after them) only
/// once they are queued for the daemon, which applies everything queued.
async fn follow(
    client: Arc<Client>,
    mut connection: Connection,
    prefixes: Vec<String>,
    events: mpsc::Sender<Result<WatchEvent, StoreError>>,
) {
    let several_watchers = prefixes.len() > 1;
    let mut pending: Option<Pending> = None;
    let mut probe = tokio::time::interval_at(Instant::now() + PROBE_INTERVAL, PROBE_INTERVAL);
    let ended = loop {
        let due = pending.as_ref().map(|pending| pending.due);
        let message = tokio::select! {
            message = connection.read() => message,
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                if !deliver(&client, &prefixes, &events, pending.take()).await {
                    return;
                }
                continue;
            }
            _ = probe.tick() => {
                if !deliver(&client, &prefixes, &events, pending.take()).await {
                    return;
                }
                match probe_node(&client, &connection.node, &prefixes[0]).await {
                    Ok(()) => continue,
                    Err(reason) => {
                        // The next watch starts on another node rather than waiting for this
                        // one to time out again.
                        client.avoid(&connection.node);
                        break reason;
                    }
                }
            }
            () = events.closed() => return,
        };
        let message = match message {
            Ok(message) => message,
            Err(ended) => {
                if !deliver(&client, &prefixes, &events, pending.take()).await {
                    return;
                }
                break ended.into_error(&client).to_string();
            }
        };
        if message.canceled {
            if !deliver(&client, &prefixes, &events, pending.take()).await {
                return;
            }
            match cancellation(&client, &connection.node, &message) {
                Ok(Opened::Stale(reason)) => match read_again(&client, &prefixes, &reason).await {
                    Ok((snapshot, reopened)) => {
                        if events
                            .send(Ok(WatchEvent::Replace(snapshot)))
                            .await
                            .is_err()
                        {
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
                        let _ = events.send(Err(error.into_store())).await;
                        return;
                    }
                },
                Ok(Opened::Watching(_)) => return,
                Err(error) => break error.to_string(),
            }
        }
        let Some(watcher) = usize::try_from(message.watch_id)
            .ok()
            .filter(|index| *index < prefixes.len())
        else {
            continue;
        };
        if message.created {
            continue;
        }
        if message.events.is_empty() {
            // A progress notification: this watcher has delivered everything up to the
            // header's revision, once what is pending has been sent.
            if !deliver(&client, &prefixes, &events, pending.take()).await {
                return;
            }
            record_progress(&client, &prefixes[watcher], message.header.revision);
            continue;
        }
        for (revision, changes) in by_revision(&message.events) {
            match &mut pending {
                Some(same) if same.revision == revision => {
                    same.changes.extend(changes);
                    same.watchers.insert(watcher);
                }
                _ => {
                    if !deliver(&client, &prefixes, &events, pending.take()).await {
                        return;
                    }
                    pending = Some(Pending {
                        revision,
                        changes,
                        watchers: BTreeSet::from([watcher]),
                        due: Instant::now() + MERGE_WINDOW,
                    });
                }
            }
        }
        if !several_watchers && !deliver(&client, &prefixes, &events, pending.take()).await {
            return;
        }
    };
    tracing::info!("etcd: {ended}; watching again");
}

/// Queues `pending` for the daemon and records it as delivered. False when the daemon stopped
/// listening.
async fn deliver(
    client: &Client,
    prefixes: &[String],
    events: &mpsc::Sender<Result<WatchEvent, StoreError>>,
    pending: Option<Pending>,
) -> bool {
    let Some(pending) = pending else {
        return true;
    };
    let event = WatchEvent::Changes {
        revision: Some(pending.revision),
        changes: pending.changes,
    };
    if events.send(Ok(event)).await.is_err() {
        return false;
    }
    for watcher in pending.watchers {
        record_progress(client, &prefixes[watcher], pending.revision);
    }
    true
}

/// Records that `prefix`'s changes up to `revision` were delivered. Within one etcd history
/// revisions only grow, so a late notification never moves the start back.
fn record_progress(client: &Client, prefix: &str, revision: i64) {
    let mut progress = client.progress.lock().unwrap_or_else(|e| e.into_inner());
    let seen = progress.entry(prefix.to_string()).or_insert(revision);
    *seen = (*seen).max(revision);
}

/// Makes a full read at `revision` the only progress: every prefix read starts right after it,
/// even when that is behind what was delivered before (etcd restored or rebuilt). Prefixes
/// not read are forgotten, as what was delivered for them may belong to a history etcd no
/// longer has.
fn restart_progress(client: &Client, prefixes: &[String], revision: Option<i64>) {
    let mut progress = client.progress.lock().unwrap_or_else(|e| e.into_inner());
    progress.clear();
    if let Some(revision) = revision {
        progress.extend(prefixes.iter().map(|prefix| (prefix.clone(), revision)));
    }
}

/// A watcher's events grouped by the revision that made them, in order. Events of a key that
/// is not UTF-8 are left out.
fn by_revision(events: &[Event]) -> Vec<(i64, Vec<Change>)> {
    let mut runs: Vec<(i64, Vec<Change>)> = Vec::new();
    for event in events {
        let revision = event.kv.mod_revision;
        if runs.last().is_none_or(|(last, _)| *last != revision) {
            runs.push((revision, Vec::new()));
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

/// Asks `node` for the number of keys under `prefix`, within the request time limit.
async fn probe_node(client: &Client, node: &str, prefix: &str) -> Result<(), String> {
    let (key, range_end) = prefix_range(prefix);
    let request = range_request(&key, &range_end, 0, Order::CountOnly).to_string();
    match tokio::time::timeout(
        PROBE_TIMEOUT,
        client.call_node::<RangeResponse>(node, "/v3/kv/range", &request),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(format!("{node} stopped answering: {error}")),
        Err(_) => Err(format!("{node} did not answer within {PROBE_TIMEOUT:?}")),
    }
}

/// The response of a watch request, read message by message.
struct Connection {
    node: String,
    response: reqwest::Response,
    /// Bytes received but not yet a whole message.
    buffer: Vec<u8>,
    /// Messages read while the watch was being set up, handed out first.
    early: VecDeque<WatchResponse>,
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
                if is_authentication_failure(&text) {
                    client.forget_token();
                }
                EtcdError::Unreachable(format!("{node}: the watch failed: {text}"))
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
                    Ok(WatchMessage::Error(error)) => Err(Ended::Refused(error, self.node.clone())),
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
            by_revision(&result.events),
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
        let runs = by_revision(&result.events);
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].0, runs[0].1.len()), (7, 1));
        assert_eq!((runs[1].0, runs[1].1.len()), (9, 2));
    }

    #[test]
    fn a_full_read_behind_the_progress_is_where_the_next_watch_starts() {
        let client = Client::new(&crate::store::etcd::EtcdOptions {
            nodes: vec!["http://127.0.0.1:2379".into()],
            ..Default::default()
        })
        .expect("client");
        let prefixes = ["/a".to_string(), "/b".to_string()];
        record_progress(&client, "/a", 612);
        record_progress(&client, "/gone", 700);
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
        restart_progress(&client, &prefixes, read.revision);
        assert_eq!(
            start_revisions(&client, &prefixes, &read),
            [Some(4), Some(4)]
        );
        assert_eq!(
            start_revisions(&client, &["/gone".to_string()], &read),
            [Some(4)]
        );
        // Within the new history, progress grows again.
        record_progress(&client, "/a", 9);
        record_progress(&client, "/a", 5);
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
