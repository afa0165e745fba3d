//! The NATS JetStream key/value store.
//!
//! A reconfd key `/a/b/c` is the NATS key `a.b.c`: the leading `/` is dropped and every `/`
//! becomes a `.`, NATS's token separator, so that a prefix becomes a subject filter. A `.` inside
//! a path segment cannot be expressed: the key `/a/b.c` would be the NATS key `a.b.c`, which
//! reads back as `/a/b/c`. NATS keys that hold a `/` (NATS allows it) read back ambiguously for
//! the same reason and are best avoided.
//!
//! Revisions are the sequence numbers of the bucket's stream: every put, delete and purge gets
//! the next one. A fetch reads each part of the bucket the prefixes need with a pull
//! consumer that delivers the last entry of every key, as the KV watchers of NATS's own clients
//! do. A bucket keeps only the last entry of each key, so it cannot be read as it was at one
//! revision while writers go on: the snapshot holds every change up to its revision (the
//! stream's end when the fetch began) and perhaps later ones. The watch follows the same parts
//! of the bucket from right after the revisions already delivered (kept per prefix in
//! [`Client::delivered`]) or the snapshot's, whichever is later, so a new watch never misses a
//! change; what it delivers again of a snapshot's later values changes nothing. When the
//! connection or a consumer breaks, the watch ends and the daemon opens a new one once the
//! client has reconnected. A watch of a bucket that was created again (its revisions start
//! over) reads everything again and reports it as a replacement.
//!
//! A start before the stream's first entry is no reason to read everything again: the bucket
//! drops a key's entries as soon as a later one replaces them, and the later one is still
//! there to deliver. Entries the server removes without leaving a marker (a bucket's maximum
//! age on servers before 2.11, `purge-deletes`) are not seen by any watch, NATS's own or
//! this one; the daemon's full resync every `--interval` catches up with them.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::consumer::AckPolicy;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{
    Config as PullConfig, MessagesError, Stream as Messages,
};
use async_nats::jetstream::kv;
use async_nats::{ConnectOptions, Event, ServerAddr};
use async_trait::async_trait;
use futures_util::{Stream, StreamExt};
use tokio::sync::{OnceCell, watch};

use super::nodes::{credentials_in, redact};
use super::progress::Progress;
use super::tls::{Tls, TlsOptions};
use super::watch::{self as watch_stream, WatchSender};
use super::{
    Change, Snapshot, Store, StoreError, StoreErrorKind, WatchStream, under_any, under_prefix,
    value,
};

/// How long a read waits for the next entry. Entries of a read arrive back to back and the
/// server sends a heartbeat every 5 s when idle; a read silent for longer is stuck (a consumer
/// being recreated after a lost connection).
const READ_IDLE_LIMIT: Duration = Duration::from_secs(15);

/// The header NATS's KV clients write on deletes (`DEL`) and purges (`PURGE`).
const KV_OPERATION: &str = "KV-Operation";

/// The header of markers the server itself writes (NATS 2.11+) when a key expires or is
/// removed.
const MARKER_REASON: &str = "Nats-Marker-Reason";

/// How to reach NATS and which bucket to read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatsOptions {
    /// Server URLs such as `nats://127.0.0.1:4222` (`tls://` for TLS).
    pub nodes: Vec<String>,
    /// The key/value bucket.
    pub bucket: String,
    /// User name, with `password`.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<String>,
    /// A token, instead of a user and password.
    pub token: Option<String>,
    /// TLS settings.
    pub tls: TlsOptions,
}

/// Reads keys from a NATS key/value bucket.
pub struct NatsStore {
    client: Arc<Client>,
}

impl NatsStore {
    /// A store for `options`; no connection is made yet. Fails for server URLs, a bucket name,
    /// credentials or TLS files that cannot work.
    pub fn new(options: &NatsOptions) -> Result<NatsStore, StoreError> {
        Ok(NatsStore {
            client: Arc::new(Client::new(options)?),
        })
    }
}

#[async_trait]
impl Store for NatsStore {
    fn name(&self) -> &'static str {
        "nats"
    }

    async fn fetch(&self, prefixes: &[String]) -> Result<Snapshot, StoreError> {
        let refusals = self.client.refusals();
        let read = async {
            let connection = self.client.connection().await?;
            let bucket = self.client.bucket(connection).await?;
            self.client.fetch(connection, &bucket, prefixes).await
        };
        read.await
            .map_err(|e| self.client.refused_since(refusals, e))
    }

    async fn watch(
        &self,
        prefixes: &[String],
        snapshot: &Snapshot,
    ) -> Result<Option<WatchStream>, StoreError> {
        let refusals = self.client.refusals();
        start_watch(Arc::clone(&self.client), prefixes, snapshot)
            .await
            .map(Some)
            .map_err(|e| self.client.refused_since(refusals, e))
    }
}

/// The reconfd key of a NATS key: `a.b.c` is `/a/b/c`.
pub fn reconfd_key(nats_key: &str) -> String {
    format!("/{}", nats_key.replace('.', "/"))
}

/// The NATS key of a reconfd key: `/a/b/c` is `a.b.c`. A `.` inside a segment stays a `.`,
/// so it reads back as a separator.
pub fn nats_key(key: &str) -> String {
    key.strip_prefix('/').unwrap_or(key).replace('/', ".")
}

/// The connection settings, the connection once made, and what the watches delivered.
struct Client {
    servers: Vec<ServerAddr>,
    /// The servers as named in messages, without passwords.
    server_names: String,
    bucket: String,
    credentials: Option<(String, String)>,
    token: Option<String>,
    /// The TLS configuration when a server URL is `tls://` or TLS settings are given; without
    /// it connections are plain unless a server asks for TLS, which async-nats then sets up
    /// with the system's CAs.
    tls: Option<rustls::ClientConfig>,
    connection: OnceCell<Connection>,
    /// What the watches delivered.
    delivered: Mutex<Delivered>,
    /// The violations the server reported on the connection.
    refusals: Arc<Mutex<Refusals>>,
}

/// The permissions and authorization violations the server reported. The server tells them
/// apart from the request it refused, which itself only times out: a request that timed out
/// after one was reported was refused, not lost.
#[derive(Default)]
struct Refusals {
    count: u64,
    last: String,
}

/// The revisions the watches delivered, per prefix, in one incarnation of the bucket's stream.
#[derive(Default)]
struct Delivered {
    /// The stream's creation time: a bucket deleted and created again starts its revisions
    /// over.
    stream: Option<String>,
    progress: Progress,
}

/// A connected client. async-nats reconnects it by itself after a lost connection.
struct Connection {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    /// Counts lost connections: a watch or read in progress ends when it changes, as its
    /// consumer is gone with the connection.
    disconnects: watch::Receiver<u64>,
}

/// Why a request to NATS failed.
type NatsError = StoreError;

impl Client {
    fn new(options: &NatsOptions) -> Result<Client, StoreError> {
        let invalid = |message: String| StoreError::invalid(format!("nats: {message}"));
        if options.nodes.is_empty() {
            return Err(invalid("no server given".to_string()));
        }
        let servers = options
            .nodes
            .iter()
            .map(|node| {
                node.parse::<ServerAddr>()
                    .map_err(|e| invalid(format!("{}: {e}", redact(node))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if options.bucket.is_empty()
            || !options
                .bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(format!(
                "bucket {:?} is not a valid bucket name (letters, digits, `_` and `-`)",
                options.bucket
            )));
        }
        let credentials = match (&options.username, &options.password) {
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            (Some(_), None) => return Err(invalid("--username needs --password".to_string())),
            (None, Some(_)) => return Err(invalid("--password needs --username".to_string())),
            (None, None) => None,
        };
        if credentials.is_some() && options.token.is_some() {
            return Err(invalid(
                "give either --username and --password or --auth-token, not both".to_string(),
            ));
        }
        let (credentials, token) = match (credentials, &options.token) {
            // NATS's own clients take `nats://user:password@host` and `nats://token@host`;
            // the client reconfd uses ignores them, so they are passed on as if given by flags.
            (None, None) => match credentials_in(&options.nodes).map_err(invalid)? {
                Some((user, Some(password))) => (Some((user, password)), None),
                Some((token, None)) => (None, Some(token)),
                None => (None, None),
            },
            (credentials, token) => (credentials, token.clone()),
        };
        let tls_url = servers.iter().any(ServerAddr::tls_required);
        let tls = if tls_url || options.tls.is_set() {
            Some(Tls::read("nats", &options.tls)?.client_config("nats", true)?)
        } else {
            None
        };
        Ok(Client {
            server_names: options
                .nodes
                .iter()
                .map(|node| redact(node))
                .collect::<Vec<_>>()
                .join(", "),
            servers,
            bucket: options.bucket.clone(),
            credentials,
            token,
            tls,
            connection: OnceCell::new(),
            delivered: Mutex::default(),
            refusals: Arc::default(),
        })
    }

    /// How many violations the server has reported so far.
    fn refusals(&self) -> u64 {
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .count
    }

    /// `error`, or a refusal of the credentials when it is a request that went unanswered
    /// and the server reported a violation after the first `before` ones.
    fn refused_since(&self, before: u64, error: StoreError) -> StoreError {
        let refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        if refusals.count > before && error.kind() == StoreErrorKind::Unreachable {
            StoreError::auth(format!("{error} ({})", refusals.last))
        } else {
            error
        }
    }

    /// The connection, made on first use. A client that lost its connection is reconnecting
    /// by itself; asking it anything before it has would only wait for a timeout.
    async fn connection(&self) -> Result<&Connection, NatsError> {
        let connection = self.connection.get_or_try_init(|| self.connect()).await?;
        match connection.client.connection_state() {
            async_nats::connection::State::Connected => Ok(connection),
            _ => Err(StoreError::unreachable(format!(
                "nats: not connected to {} (reconnecting)",
                self.server_names
            ))),
        }
    }

    async fn connect(&self) -> Result<Connection, NatsError> {
        let (disconnected, disconnects) = watch::channel(0u64);
        let disconnected = Arc::new(disconnected);
        let refusals = Arc::clone(&self.refusals);
        let mut options = ConnectOptions::new()
            .name("reconfd")
            .event_callback(move |event| {
                let disconnected = Arc::clone(&disconnected);
                let refusals = Arc::clone(&refusals);
                async move {
                    if matches!(event, Event::Disconnected | Event::Closed) {
                        disconnected.send_modify(|count| *count += 1);
                    }
                    if let Event::ServerError(error) = &event
                        && is_refusal(error)
                    {
                        let mut refusals = refusals.lock().unwrap_or_else(|e| e.into_inner());
                        refusals.count += 1;
                        refusals.last = error.to_string();
                    }
                    tracing::debug!("nats: {event}");
                }
            });
        if let Some((user, password)) = &self.credentials {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(config) = &self.tls {
            options = options.require_tls(true).tls_client_config(config.clone());
        }
        let client = options.connect(self.servers.clone()).await.map_err(|e| {
            StoreError::new(
                connect_error_kind(e.kind()),
                format!("nats: cannot connect to {}: {e}", self.server_names),
            )
        })?;
        let jetstream = async_nats::jetstream::new(client.clone());
        Ok(Connection {
            client,
            jetstream,
            disconnects,
        })
    }

    /// The bucket, with its stream's current state: where its revisions start and end.
    async fn bucket(&self, connection: &Connection) -> Result<kv::Store, NatsError> {
        connection
            .jetstream
            .get_key_value(&self.bucket)
            .await
            .map_err(|e| self.bucket_error(&e))
    }

    fn bucket_error(&self, error: &async_nats::jetstream::context::KeyValueError) -> NatsError {
        bucket_error(&self.bucket, &self.server_names, &error.to_string())
    }

    /// Every key under `prefixes`, with every change up to the snapshot's revision.
    ///
    /// A bucket keeps only the last entry of each key, so the bucket as it was at an earlier
    /// revision cannot be read back; the parts are read side by side while writers go on, and
    /// a key may hold a value newer than the revision. The watch that starts after the
    /// revision delivers those newer values again, which changes nothing.
    async fn fetch(
        &self,
        connection: &Connection,
        bucket: &kv::Store,
        prefixes: &[String],
    ) -> Result<Snapshot, NatsError> {
        let info = bucket.stream.cached_info();
        self.note_stream(&info.created.to_string());
        // Every part's consumer is created after this point, so every read holds each change
        // up to it, and perhaps later ones.
        let revision = info.state.last_sequence;
        let reads =
            futures_util::future::try_join_all(filters(prefixes).iter().map(|filter| async move {
                let mut keys = Snapshot::default();
                self.read(connection, bucket, filter, &mut keys).await?;
                Ok::<_, NatsError>(keys)
            }))
            .await?;
        let mut keys = Snapshot::default();
        for read in reads {
            keys.merge(read);
        }
        keys.revision = Some(as_revision(revision));
        Ok(keys)
    }

    /// Applies the last entry of every key in `filter`'s part of the bucket to `keys`.
    ///
    /// The read ends once it has applied as many entries as the consumer had to deliver when
    /// it was created (one per key), rather than when the server reports nothing more
    /// pending: a read of a bucket being written to would otherwise chase the writers.
    async fn read(
        &self,
        connection: &Connection,
        bucket: &kv::Store,
        filter: &Filter,
        keys: &mut Snapshot,
    ) -> Result<(), NatsError> {
        let mut disconnects = connection.disconnects.clone();
        disconnects.mark_unchanged();
        let (mut messages, pending) = self
            .consumer(bucket, filter, DeliverPolicy::LastPerSubject)
            .await?;
        let mut last = 0;
        let mut remaining = pending;
        while remaining > 0 {
            let message = tokio::select! {
                message = tokio::time::timeout(READ_IDLE_LIMIT, messages.next()) => message,
                _ = disconnects.changed() => {
                    return Err(self.read_error("the connection was lost"));
                }
            };
            let message = match message {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return Err(self.read_error(&e.to_string())),
                Ok(None) => return Err(self.read_error("the consumer ended")),
                Err(_) => {
                    return Err(
                        self.read_error(&format!("nothing arrived for {READ_IDLE_LIMIT:?}"))
                    );
                }
            };
            let entry = Entry::parse(&message, &bucket.prefix)
                .ok_or_else(|| self.read_error("an entry without stream metadata"))?;
            if entry.revision <= last {
                continue;
            }
            last = entry.revision;
            remaining -= 1;
            if under_any(entry.change.key(), &filter.prefixes) {
                keys.apply(entry.change);
            }
            if entry.pending == 0 {
                break;
            }
        }
        Ok(())
    }

    fn read_error(&self, reason: &str) -> NatsError {
        StoreError::unreachable(format!(
            "nats: reading bucket `{}` on {} failed: {reason}",
            self.bucket, self.server_names
        ))
    }

    /// A consumer of `filter`'s part of the bucket, and the number of entries it had to
    /// deliver when it was created.
    ///
    /// A plain pull consumer, not an ordered one: an ordered consumer quietly makes itself
    /// again when the server drops it (a restart, the bucket deleted), from the stream's
    /// beginning when it had delivered nothing yet, and may then wait on a bucket created
    /// anew. A plain one reports the loss, the watch ends, and the next one starts from what
    /// was delivered.
    async fn consumer(
        &self,
        bucket: &kv::Store,
        filter: &Filter,
        policy: DeliverPolicy,
    ) -> Result<(Messages, u64), NatsError> {
        let fail = |e: &dyn std::fmt::Display| {
            StoreError::unreachable(format!(
                "nats: cannot read bucket `{}` on {}: {e}",
                self.bucket, self.server_names
            ))
        };
        let consumer = bucket
            .stream
            .create_consumer(PullConfig {
                description: Some("reconfd".to_string()),
                filter_subject: filter.subject(&bucket.prefix),
                replay_policy: async_nats::jetstream::consumer::ReplayPolicy::Instant,
                deliver_policy: policy,
                ack_policy: AckPolicy::None,
                // Ephemeral and in memory, as NATS's own KV watchers make them; the server
                // removes one the client stopped asking from.
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                num_replicas: 1,
                ..PullConfig::default()
            })
            .await
            .map_err(|e| fail(&e))?;
        // A pull consumer delivers nothing before it is asked, so this counts every entry
        // it has to deliver. (A push consumer starts sending as it is created, before its
        // subscriber exists, and loses what it sent then.)
        let pending = consumer.cached_info().num_pending;
        let messages = consumer.messages().await.map_err(|e| fail(&e))?;
        Ok((messages, pending))
    }

    /// Remembers which incarnation of the bucket's stream the revisions belong to; what the
    /// watches delivered from an earlier one says nothing about this one.
    fn note_stream(&self, created: &str) {
        let mut delivered = self.delivered();
        if delivered.stream.as_deref() != Some(created) {
            delivered.stream = Some(created.to_string());
            delivered.progress = Progress::default();
        }
    }

    /// What the watches delivered.
    fn delivered(&self) -> MutexGuard<'_, Delivered> {
        self.delivered.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why bucket `bucket` could not be opened on `servers`, from the client's `text`. A bucket
/// that does not exist, or a server without JetStream, is a refusal: asking again at once
/// will not create it.
fn bucket_error(bucket: &str, servers: &str, text: &str) -> StoreError {
    if text.contains("stream not found") {
        StoreError::rejected(format!(
            "nats: bucket `{bucket}` not found on {servers}; reconfd does not create it \
             (`nats kv add {bucket}` does)"
        ))
    } else if text.contains("no responders")
        // What a server started without JetStream answers to the bucket's lookup.
        || text.contains("requested JetStream resource does not exist")
    {
        StoreError::rejected(format!(
            "nats: JetStream is not enabled on {servers}, so bucket `{bucket}` is not there"
        ))
    } else {
        StoreError::unreachable(format!(
            "nats: cannot open bucket `{bucket}` on {servers}: {text}"
        ))
    }
}

/// The kind of failure a failed connection stands for: credentials the server refused (or a
/// nonce that could not be signed with them), server URLs that cannot work, or a server
/// that could not be reached (DNS, TCP, TLS, a timeout).
fn connect_error_kind(kind: async_nats::ConnectErrorKind) -> StoreErrorKind {
    use async_nats::ConnectErrorKind;
    match kind {
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
            StoreErrorKind::Auth
        }
        ConnectErrorKind::ServerParse => StoreErrorKind::Invalid,
        ConnectErrorKind::Dns
        | ConnectErrorKind::TimedOut
        | ConnectErrorKind::Tls
        | ConnectErrorKind::Io
        | ConnectErrorKind::MaxReconnects => StoreErrorKind::Unreachable,
    }
}

/// True for a server error that refuses the client's credentials or what they allow: an
/// authorization violation, or a permissions violation of a publish (a JetStream request)
/// or a subscription (the inbox its answers come to).
fn is_refusal(error: &async_nats::ServerError) -> bool {
    match error {
        async_nats::ServerError::AuthorizationViolation => true,
        async_nats::ServerError::Other(text) => {
            let text = text.to_ascii_lowercase();
            text.contains("permissions violation") || text.contains("authorization violation")
        }
        _ => false,
    }
}

/// A stream sequence as a revision. Sequences count messages and stay far below `i64::MAX`.
fn as_revision(sequence: u64) -> i64 {
    i64::try_from(sequence).unwrap_or(i64::MAX)
}

/// One part of the bucket to read: a subject filter, and the prefixes whose keys it holds.
#[derive(Debug, PartialEq, Eq)]
struct Filter {
    /// The NATS key tokens every key of the part starts with; none for the whole bucket.
    tokens: Vec<String>,
    prefixes: Vec<String>,
}

impl Filter {
    /// The filter subject, `$KV.<bucket>.a.b.>` for the tokens `a`, `b`.
    fn subject(&self, bucket_prefix: &str) -> String {
        if self.tokens.is_empty() {
            format!("{bucket_prefix}>")
        } else {
            format!("{bucket_prefix}{}.>", self.tokens.join("."))
        }
    }
}

/// The parts of the bucket that hold every key under `prefixes`, none inside another. Keys
/// are selected by plain string prefix, as in confd, so `/a/b` selects `/a/bc` as well: a
/// prefix's part is that of its last complete segment, `a.>`, and the keys under the prefix
/// are picked from it.
fn filters(prefixes: &[String]) -> Vec<Filter> {
    let mut by_tokens: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    for prefix in prefixes {
        let complete = prefix.rsplit_once('/').map_or("", |(head, _)| head);
        let tokens: Vec<String> = if complete.is_empty() {
            Vec::new()
        } else {
            nats_key(complete)
                .split('.')
                // A token a filter cannot name literally (empty, a wildcard) ends the filter
                // early: its part is a larger one, still holding every key of the prefix.
                .take_while(|token| {
                    !token.is_empty()
                        && !token.contains(|c: char| c == '*' || c == '>' || c.is_whitespace())
                })
                .map(str::to_string)
                .collect()
        };
        by_tokens.entry(tokens).or_default().push(prefix.clone());
    }
    // Sorted, a part comes before the parts inside it.
    let mut filters: Vec<Filter> = Vec::new();
    for (tokens, prefixes) in by_tokens {
        match filters
            .iter_mut()
            .find(|filter| tokens.starts_with(&filter.tokens))
        {
            Some(outer) => outer.prefixes.extend(prefixes),
            None => filters.push(Filter { tokens, prefixes }),
        }
    }
    filters
}

/// One entry of the bucket's stream as a change.
struct Entry {
    revision: u64,
    /// Entries the consumer still had to deliver after this one.
    pending: u64,
    change: Change,
}

impl Entry {
    /// The entry `message` carries; `None` for a message without JetStream metadata.
    fn parse(message: &async_nats::jetstream::Message, bucket_prefix: &str) -> Option<Entry> {
        let info = message.info().ok()?;
        let nats_key = message
            .subject
            .strip_prefix(bucket_prefix)
            .unwrap_or(&message.subject);
        let key = reconfd_key(nats_key);
        let change = if is_removal(message.headers.as_ref()) {
            Change::Delete { key }
        } else {
            Change::put(key, value(message.payload.to_vec()))
        };
        Some(Entry {
            revision: info.stream_sequence,
            pending: info.pending,
            change,
        })
    }
}

/// True for a delete or purge marker rather than a value.
fn is_removal(headers: Option<&async_nats::HeaderMap>) -> bool {
    let Some(headers) = headers else {
        return false;
    };
    if let Some(operation) = headers.get(KV_OPERATION) {
        return kv::Operation::from_str(operation.as_str())
            .is_ok_and(|operation| operation != kv::Operation::Put);
    }
    headers.get(MARKER_REASON).is_some()
}

/// True for a purge marker, which removed the key's earlier entries.
fn is_purge(headers: Option<&async_nats::HeaderMap>) -> bool {
    headers
        .and_then(|headers| headers.get(KV_OPERATION))
        .and_then(|operation| kv::Operation::from_str(operation.as_str()).ok())
        == Some(kv::Operation::Purge)
}

/// One part of the bucket being watched.
struct Watched {
    filter: Filter,
    /// For each of the filter's prefixes, the first revision not yet delivered for it.
    starts: Vec<u64>,
    /// The last revision seen, so that a consumer async-nats recreated cannot repeat one.
    last: u64,
}

/// Opens the watch of `prefixes`, or, when the revisions it would start from are gone, reads
/// everything again and reports it as a replacement.
async fn start_watch(
    client: Arc<Client>,
    prefixes: &[String],
    snapshot: &Snapshot,
) -> Result<WatchStream, NatsError> {
    let connection = client.connection().await?;
    let mut disconnects = connection.disconnects.clone();
    disconnects.mark_unchanged();
    // Subscribed before the bucket is looked at: a deletion after that is seen, and one before
    // shows as a bucket created anew. The consumers themselves would quietly wait for a stream
    // of the same name to come back.
    let deleted = connection
        .client
        .subscribe(format!(
            "$JS.EVENT.ADVISORY.STREAM.DELETED.KV_{}",
            client.bucket
        ))
        .await
        .map_err(|e| client.read_error(&e.to_string()))?;
    // The server has the subscription once it has answered what follows it.
    connection
        .client
        .flush()
        .await
        .map_err(|e| client.read_error(&e.to_string()))?;
    let bucket = client.bucket(connection).await?;
    let info = bucket.stream.cached_info();
    let created = info.created.to_string();
    let last = info.state.last_sequence;
    let (stream, progress) = {
        let delivered = client.delivered();
        (delivered.stream.clone(), delivered.progress.clone())
    };
    let start = |prefix: &String| {
        progress
            .start(prefix, snapshot.revision)
            .and_then(|start| u64::try_from(start).ok())
            .unwrap_or(last.saturating_add(1))
    };
    let watched: Vec<Watched> = filters(prefixes)
        .into_iter()
        .map(|filter| Watched {
            starts: filter.prefixes.iter().map(start).collect(),
            filter,
            last: 0,
        })
        .collect();
    let earliest = watched.iter().flat_map(|w| w.starts.iter()).min().copied();
    let latest = watched.iter().flat_map(|w| w.starts.iter()).max().copied();
    let stale = if stream.as_ref().is_some_and(|seen| *seen != created) {
        Some("the bucket was created again".to_string())
    } else {
        latest.filter(|latest| *latest > last + 1).map(|latest| {
            format!(
                "the bucket is at revision {last} but changes up to {} were seen (was it \
                 created again?)",
                latest - 1
            )
        })
    };
    if let Some(reason) = stale {
        tracing::info!(
            "nats: bucket `{}`: {reason}; reading every key again",
            client.bucket
        );
        let snapshot = client.fetch(connection, &bucket, prefixes).await?;
        // The daemon takes this snapshot as its own: the next watch starts right after it.
        client
            .delivered()
            .progress
            .restart(prefixes, snapshot.revision);
        // The stream ends after the read, and the daemon watches again from it.
        let (_, stream) = watch_stream::channel_replacing(snapshot);
        return Ok(stream);
    }
    client.note_stream(&created);
    let consumers =
        futures_util::future::try_join_all(watched.iter().enumerate().map(|(index, w)| {
            let start_sequence = w.starts.iter().min().copied().unwrap_or(last + 1);
            let client = &client;
            let bucket = &bucket;
            async move {
                let (messages, _) = client
                    .consumer(
                        bucket,
                        &w.filter,
                        DeliverPolicy::ByStartSequence { start_sequence },
                    )
                    .await?;
                Ok::<_, NatsError>(messages.map(move |message| (index, message)))
            }
        }))
        .await?;
    tracing::debug!(
        "nats: watching {} prefixes of bucket `{}` from revision {}",
        prefixes.len(),
        client.bucket,
        earliest.unwrap_or(last + 1)
    );
    let (events, stream) = watch_stream::channel();
    tokio::spawn(follow(
        client,
        created,
        bucket.prefix.clone(),
        watched,
        futures_util::stream::select_all(consumers),
        Endings {
            disconnects,
            deleted,
        },
        events,
    ));
    Ok(stream)
}

/// What ends a watch besides its consumers: a lost connection, or the bucket deleted.
struct Endings {
    disconnects: watch::Receiver<u64>,
    /// The server's advisories that the bucket's stream was deleted.
    deleted: async_nats::Subscriber,
}

/// Turns the consumers' entries into watch events until a consumer or the connection breaks,
/// the bucket is deleted, or the daemon stops listening. An entry is recorded as delivered (the next watch starts
/// after it) only once it is queued for the daemon, which applies everything queued.
async fn follow(
    client: Arc<Client>,
    stream: String,
    bucket_prefix: String,
    mut watched: Vec<Watched>,
    mut consumers: impl Stream<Item = (usize, Result<async_nats::jetstream::Message, MessagesError>)>
    + Unpin,
    mut endings: Endings,
    events: WatchSender,
) {
    let ended = loop {
        let (index, message) = tokio::select! {
            next = consumers.next(), if !watched.is_empty() => match next {
                Some(next) => next,
                None => break "the watch ended".to_string(),
            },
            _ = endings.disconnects.changed() => {
                break format!("lost the connection to {}", client.server_names);
            }
            _ = endings.deleted.next() => break "the bucket was deleted".to_string(),
            () = events.closed() => return,
        };
        let message = match message {
            Ok(message) => message,
            Err(e) => break format!("the watch broke: {e}"),
        };
        // Without its metadata an entry's revision is unknown: the next watch starts again
        // before it.
        let Some(entry) = Entry::parse(&message, &bucket_prefix) else {
            break "an entry without stream metadata arrived".to_string();
        };
        let Some(part) = watched.get_mut(index) else {
            continue;
        };
        // The consumer starts at the part's first start; an entry before it comes from a
        // consumer async-nats made again from the stream's beginning, on a bucket that may
        // have been created anew (its deletion advisory can come too late or not at all).
        if part
            .starts
            .iter()
            .min()
            .is_some_and(|first| entry.revision < *first)
        {
            break "an entry from before the watch's start came (was the bucket created \
                   again?)"
                .to_string();
        }
        if entry.revision <= part.last {
            continue;
        }
        part.last = entry.revision;
        let wanted = part
            .filter
            .prefixes
            .iter()
            .zip(&part.starts)
            .any(|(prefix, start)| {
                entry.revision >= *start && under_prefix(entry.change.key(), prefix)
            });
        let purge = is_purge(message.headers.as_ref());
        if wanted {
            let (revision, changes) = (Some(as_revision(entry.revision)), vec![entry.change]);
            if !events.changes(revision, changes).await {
                return;
            }
        }
        record_progress(&client, &stream, &part.filter.prefixes, entry.revision);
        if purge {
            // A purge can move the server's consumers past entries they had not delivered
            // yet (nats-server before 2.10 does so): read everything again to be sure.
            let prefixes: Vec<String> = watched
                .iter()
                .flat_map(|w| w.filter.prefixes.iter().cloned())
                .collect();
            let read = async {
                let connection = client.connection().await?;
                let bucket = client.bucket(connection).await?;
                client.fetch(connection, &bucket, &prefixes).await
            };
            match read.await {
                Ok(snapshot) => {
                    if !events.replace(snapshot).await {
                        return;
                    }
                }
                Err(e) => break format!("reading again after a purge failed: {e}"),
            }
        }
    };
    tracing::info!("nats: bucket `{}`: {ended}; watching again", client.bucket);
}

/// Records that the watch of `prefixes` delivered everything up to `revision` of the stream
/// created at `stream`, unless a later read found the bucket created again meanwhile.
fn record_progress(client: &Client, stream: &str, prefixes: &[String], revision: u64) {
    let mut delivered = client.delivered();
    if delivered.stream.as_deref() == Some(stream) {
        delivered
            .progress
            .advance_all(prefixes, as_revision(revision));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_kinds() {
        use async_nats::ConnectErrorKind;
        assert_eq!(
            connect_error_kind(ConnectErrorKind::AuthorizationViolation),
            StoreErrorKind::Auth
        );
        assert_eq!(
            connect_error_kind(ConnectErrorKind::Authentication),
            StoreErrorKind::Auth
        );
        assert_eq!(
            connect_error_kind(ConnectErrorKind::Io),
            StoreErrorKind::Unreachable
        );
        assert_eq!(
            connect_error_kind(ConnectErrorKind::TimedOut),
            StoreErrorKind::Unreachable
        );
        let bucket = |text: &str| bucket_error("app", "nats://n1:4222", text).kind();
        assert_eq!(
            bucket("failed to get the bucket: stream not found"),
            StoreErrorKind::Rejected
        );
        assert_eq!(
            bucket("JetStream error: no responders"),
            StoreErrorKind::Rejected
        );
        assert_eq!(
            bucket(
                "failed to get the bucket: request error: requested JetStream resource does not \
                 exist"
            ),
            StoreErrorKind::Rejected
        );
        assert_eq!(bucket("timed out"), StoreErrorKind::Unreachable);
        assert!(is_refusal(&async_nats::ServerError::AuthorizationViolation));
        assert!(is_refusal(&async_nats::ServerError::Other(
            "Permissions Violation for Publish to \"$JS.API.STREAM.INFO.KV_app\"".to_string()
        )));
        assert!(!is_refusal(&async_nats::ServerError::Other(
            "Maximum Payload Violation".to_string()
        )));
    }

    #[test]
    fn a_timeout_after_a_reported_violation_is_a_refusal() {
        let client = Client::new(&NatsOptions {
            nodes: vec!["nats://127.0.0.1:4222".to_string()],
            bucket: "app".to_string(),
            ..NatsOptions::default()
        })
        .expect("valid options");
        let before = client.refusals();
        let timeout = || StoreError::unreachable("nats: cannot open bucket `app`: timed out");
        assert_eq!(
            client.refused_since(before, timeout()).kind(),
            StoreErrorKind::Unreachable
        );
        {
            let mut refusals = client.refusals.lock().expect("lock");
            refusals.count += 1;
            refusals.last = "nats: Permissions Violation for Publish".to_string();
        }
        let error = client.refused_since(before, timeout());
        assert_eq!(error.kind(), StoreErrorKind::Auth);
        assert!(
            error.to_string().contains("Permissions Violation"),
            "{error}"
        );
        assert_eq!(
            client.refused_since(client.refusals(), timeout()).kind(),
            StoreErrorKind::Unreachable,
            "a violation reported before the request began says nothing of it"
        );
    }

    #[test]
    fn keys_map_to_nats_and_back() {
        assert_eq!(nats_key("/app/servers/web1"), "app.servers.web1");
        assert_eq!(reconfd_key("app.servers.web1"), "/app/servers/web1");
        assert_eq!(nats_key("/a"), "a");
        assert_eq!(reconfd_key("a"), "/a");
        assert_eq!(nats_key("a/b"), "a.b", "a relative key too");
        for key in ["/proxy/frontend/web00050", "/x", "/a_b/c-d/e=f"] {
            assert_eq!(reconfd_key(&nats_key(key)), key);
        }
        // A dot inside a segment is a separator in NATS: it cannot come back.
        assert_eq!(reconfd_key(&nats_key("/a/b.c")), "/a/b/c");
    }

    fn prefixes(list: &[&str]) -> Vec<String> {
        list.iter().map(|prefix| prefix.to_string()).collect()
    }

    #[test]
    fn a_prefix_reads_the_part_of_its_last_complete_segment() {
        let subjects = |list: &[&str]| -> Vec<String> {
            filters(&prefixes(list))
                .iter()
                .map(|filter| filter.subject("$KV.b."))
                .collect()
        };
        assert_eq!(subjects(&["/app/servers"]), ["$KV.b.app.>"]);
        assert_eq!(subjects(&["/app/servers/"]), ["$KV.b.app.servers.>"]);
        assert_eq!(subjects(&["/app"]), ["$KV.b.>"]);
        assert_eq!(subjects(&["/"]), ["$KV.b.>"]);
        assert_eq!(subjects(&[""]), ["$KV.b.>"]);
        assert_eq!(subjects(&["/a/*/c/d"]), ["$KV.b.a.>"], "no wildcard");
        assert_eq!(subjects(&["/a//b/c"]), ["$KV.b.a.>"], "no empty token");
    }

    #[test]
    fn parts_inside_another_are_merged_into_it() {
        let merged = filters(&prefixes(&["/x/a/1", "/y/b", "/x/c", "/x/a/2", "/z/q/r"]));
        assert_eq!(
            merged,
            [
                Filter {
                    tokens: vec!["x".into()],
                    prefixes: prefixes(&["/x/c", "/x/a/1", "/x/a/2"]),
                },
                Filter {
                    tokens: vec!["y".into()],
                    prefixes: prefixes(&["/y/b"]),
                },
                Filter {
                    tokens: vec!["z".into(), "q".into()],
                    prefixes: prefixes(&["/z/q/r"]),
                },
            ]
        );
        let everything = filters(&prefixes(&["/x/a/1", "/top"]));
        assert_eq!(everything.len(), 1);
        assert!(everything[0].tokens.is_empty());
        assert_eq!(everything[0].prefixes, prefixes(&["/top", "/x/a/1"]));
    }

    #[test]
    fn deletes_and_purges_are_removals() {
        let mut headers = async_nats::HeaderMap::new();
        assert!(!is_removal(None));
        assert!(!is_removal(Some(&headers)));
        headers.insert(KV_OPERATION, "DEL");
        assert!(is_removal(Some(&headers)));
        headers.insert(KV_OPERATION, "PURGE");
        assert!(is_removal(Some(&headers)));
        let mut marker = async_nats::HeaderMap::new();
        marker.insert(MARKER_REASON, "MaxAge");
        assert!(is_removal(Some(&marker)));
    }

    #[test]
    fn settings_that_cannot_work_are_named() {
        let options = |bucket: &str| NatsOptions {
            nodes: vec!["nats://127.0.0.1:4222".into()],
            bucket: bucket.into(),
            ..NatsOptions::default()
        };
        let error = |options: NatsOptions| match NatsStore::new(&options) {
            Ok(_) => panic!("accepted {options:?}"),
            Err(e) => e.to_string(),
        };
        assert!(NatsStore::new(&options("reconfd")).is_ok());
        assert!(error(options("con.fig")).contains("con.fig"));
        let mut bad_node = options("reconfd");
        bad_node.nodes = vec!["http://127.0.0.1:4222".into()];
        assert!(error(bad_node).contains("http://127.0.0.1:4222"));
        let mut half = options("reconfd");
        half.username = Some("me".into());
        assert!(error(half).contains("--password"));
        let mut missing = options("reconfd");
        missing.tls.client_ca_keys = Some("/nonexistent/ca.pem".into());
        assert!(error(missing).contains("/nonexistent/ca.pem"));
    }

    #[test]
    fn passwords_are_not_shown() {
        let client = Client::new(&NatsOptions {
            nodes: vec![
                "nats://me:secret@127.0.0.1:4222".to_string(),
                "nats://127.0.0.1:4223".to_string(),
            ],
            bucket: "app".to_string(),
            ..NatsOptions::default()
        })
        .expect("valid options");
        assert_eq!(
            client.server_names,
            "nats://me:***@127.0.0.1:4222, nats://127.0.0.1:4223"
        );
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn every_prefix_has_one_part_of_the_bucket(
            prefixes in prop::collection::vec(
                prop_oneof!["(/[a-z.*> ]{0,4}){0,4}", any::<String>()],
                0..6,
            )
        ) {
            let filters = filters(&prefixes);
            for prefix in &prefixes {
                let holding = filters
                    .iter()
                    .filter(|filter| filter.prefixes.contains(prefix))
                    .count();
                prop_assert!(holding >= 1, "{prefix:?} in {} filters", holding);
                let _ = reconfd_key(&nats_key(prefix));
            }
        }
    }
}
