//! The Redis store: plain string keys named like paths, and hashes read as one key per field.
//!
//! A fetch lists the keys under each prefix with `SCAN` (never `KEYS`, which blocks the
//! server), reads them with `MGET` in chunks, and reads the keys `MGET` found no string in with
//! one pipelined `GET` + `HGETALL` each: that finds the hashes and skips lists, sets and keys
//! deleted meanwhile, in one more round trip whatever their number.
//!
//! A watch subscribes to keyspace notifications for the prefixes first, then reads every key
//! and reports the result as a [`WatchEvent::Replace`]: pub/sub keeps no history, so this read
//! covers whatever changed before the subscription (during a disconnection, say). After that,
//! each notified key is read again and reported as it is now. Notifications need
//! `notify-keyspace-events` to hold [`REQUIRED_EVENTS`]; the watch adds the missing flags.
//! Where `CONFIG GET` is refused (ACLs, a managed Redis), the setting cannot be read: the watch
//! subscribes anyway, trusting the operator to have set it, and the daemon's read at every
//! `--interval` catches what notifications do not bring. Where the flags are known to be
//! missing and `CONFIG SET` is refused, the daemon polls instead. A server that does not
//! answer `CONFIG` in time is out of reach, as for any other request.
//!
//! Nodes are alternatives, chosen by the [`Nodes`] policy: the one that answered last is tried
//! first, and the next one when it cannot be reached.
//!
//! [`WatchEvent::Replace`]: super::WatchEvent::Replace

pub mod lease;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::io::tcp::TcpSettings;
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, RedisError,
    TlsCertificates, Value,
};
use tokio::task::JoinSet;

use super::nodes::{Nodes, redact};
use super::tls::{Tls, TlsOptions};
use super::watch::{self, Probes, WatchSender};
use super::{
    Change, Snapshot, Store, StoreError, StoreErrorKind, Value as KeyValue, WatchStream, under_any,
    value,
};

/// Limit for connecting to a node (and logging in), so that a dead node costs little before
/// the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Limit for one request; a pipeline of thousands of reads takes milliseconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Keys `SCAN` looks at per call: few round trips, and each call still blocks the server for
/// well under a millisecond.
const SCAN_COUNT: usize = 1000;

/// Keys per `MGET`, so that no single reply is huge.
const MGET_CHUNK: usize = 1000;

/// Notified keys read again in one pipeline; a burst beyond it is read in several.
const MAX_BATCH: usize = 1000;

/// The `notify-keyspace-events` flags a watch needs: keyspace channels (`K`) for generic
/// commands such as `DEL` and `RENAME` (`g`), string (`$`) and hash (`h`) commands, expired
/// (`x`) and evicted (`e`) keys.
const REQUIRED_EVENTS: &str = "Kg$hxe";

/// The flags Redis's `A` stands for, among the required ones.
const COVERED_BY_ALL: &str = "g$hxe";

/// How to reach Redis.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RedisOptions {
    /// Node URLs, `redis://[user:password@]host:port[/db]` or `rediss://` for TLS; tried in
    /// order.
    pub nodes: Vec<String>,
    /// ACL user name (Redis 6+), unless the URL names one.
    pub username: Option<String>,
    /// Password, unless the URL holds one.
    pub password: Option<String>,
    /// The separator in Redis key names that stands for `/` (confd's `separator`); `/` keeps
    /// key names as they are.
    pub separator: String,
    /// TLS settings for `rediss://` nodes.
    pub tls: TlsOptions,
}

/// Reads keys from Redis.
pub struct RedisStore {
    client: Arc<Client>,
}

impl RedisStore {
    /// A store for `options`; no connection is made yet. Fails when a node URL is not a Redis
    /// URL, the separator is empty, or a TLS file cannot be read.
    pub fn new(options: &RedisOptions) -> Result<RedisStore, StoreError> {
        Ok(RedisStore {
            client: Arc::new(Client::new(options)?),
        })
    }
}

#[async_trait]
impl Store for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn fetch(&self, prefixes: &[String]) -> Result<Snapshot, StoreError> {
        let separator = self.client.separator.as_str();
        let (_, read) =
            self.client
                .run(|mut connection| async move {
                    read_all(&mut connection, prefixes, separator).await
                })
                .await?;
        Ok(read.keys)
    }

    /// Subscribes to the prefixes' keyspace notifications, then reads every key: the stream's
    /// first event is that read, as a [`WatchEvent::Replace`]. `None` when the server's
    /// notifications lack flags and `CONFIG SET` is refused, so they cannot be turned on.
    ///
    /// The fields of each hash are tracked from that read on rather than from `snapshot`: the
    /// read is what the daemon holds once it has applied the first event.
    ///
    /// [`WatchEvent::Replace`]: super::WatchEvent::Replace
    async fn watch(
        &self,
        prefixes: &[String],
        _snapshot: &Snapshot,
    ) -> Result<Option<WatchStream>, StoreError> {
        let client = &self.client;
        let (mut connected, notifications) = client
            .run(|mut connection| async move { enable_notifications(&mut connection).await })
            .await?;
        let node = &client.nodes[connected.index];
        match notifications {
            Notifications::Enabled => {}
            Notifications::TurnedOn { was, now } => tracing::info!(
                "redis: {}: turned keyspace notifications on (notify-keyspace-events {was:?} \
                 → {now:?})",
                node.name
            ),
            Notifications::Unknown(reason) => {
                if !client.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "redis: {}: cannot read notify-keyspace-events ({reason}); watching \
                         anyway: changes are seen at once if it includes {REQUIRED_EVENTS}, \
                         and otherwise at each --interval",
                        node.name
                    );
                }
            }
            Notifications::Refused(reason) => {
                if !client.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "redis: {}: keyspace notifications cannot be turned on ({reason}); \
                         polling instead. Set notify-keyspace-events to include \
                         {REQUIRED_EVENTS} on the server to watch",
                        node.name
                    );
                }
                return Ok(None);
            }
        }

        let channel_prefix = format!("__keyspace@{}__:", node.db);
        let patterns: Vec<String> = prefixes
            .iter()
            .map(|prefix| {
                let name = redis_key(prefix, &client.separator);
                format!("{channel_prefix}{}*", escape_glob(&name))
            })
            .collect();
        let (sink, messages) = subscribe(node, &patterns).await?;

        // Notifications of changes made during this read queue up in the subscription and are
        // read again after it, so none is lost and none undoes a newer value.
        let read = read_all(&mut connected.connection, prefixes, &client.separator)
            .await
            .map_err(|failure| client.failed(&connected, failure))?;
        tracing::debug!(
            "redis: watching {} prefixes on {}",
            prefixes.len(),
            node.name
        );
        let (events, stream) = watch::channel_replacing(read.keys);
        let follower = Follower {
            client: Arc::clone(client),
            connected,
            prefixes: prefixes.to_vec(),
            channel_prefix,
            hashes: read.hashes,
            events,
        };
        tokio::spawn(follower.run(sink, messages));
        Ok(Some(stream))
    }
}

/// A connection to `node` subscribed to the channels matching `patterns`.
async fn subscribe(
    node: &Node,
    patterns: &[String],
) -> Result<(PubSubSink, PubSubStream), StoreError> {
    let unreachable =
        |message: String| StoreError::unreachable(format!("{}: {message}", node.name));
    let failed = |error: RedisError, request: &str| {
        StoreError::new(
            error_kind(&error),
            format!("{}: {request}{}", node.name, describe(&error)),
        )
    };
    let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, node.client.get_async_pubsub())
        .await
        .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| failed(e, ""))?;
    let (mut sink, messages) = pubsub.split();
    if !patterns.is_empty() {
        tokio::time::timeout(REQUEST_TIMEOUT, sink.psubscribe(patterns))
            .await
            .map_err(|_| unreachable(format!("PSUBSCRIBE: no answer within {REQUEST_TIMEOUT:?}")))?
            .map_err(|e| failed(e, "PSUBSCRIBE: "))?;
    }
    Ok((sink, messages))
}

/// A node: its client (address, credentials, TLS) and its name for messages.
struct Node {
    /// The URL without credentials.
    name: String,
    client: redis::Client,
    /// The database the URL selects, whose notification channels are watched.
    db: i64,
}

/// A connection to one node, shared by every request the store makes to it.
#[derive(Clone)]
struct Connected {
    /// The node's index in [`Client::nodes`].
    index: usize,
    connection: MultiplexedConnection,
}

/// A request that failed, and what it asked for.
struct Failure {
    error: RedisError,
    /// The command and key or pattern, for the message.
    request: String,
}

impl Failure {
    fn of(request: impl Into<String>) -> impl FnOnce(RedisError) -> Failure {
        let request = request.into();
        move |error| Failure { error, request }
    }
}

/// The nodes and the connection in use, shared by the store and its watch task.
struct Client {
    nodes: Nodes<Node>,
    /// The connection to the node that answered last, kept between requests.
    connection: Mutex<Option<Connected>>,
    separator: String,
    /// A warning about the keyspace notifications setting was logged (once per client).
    warned: AtomicBool,
}

impl Client {
    fn new(options: &RedisOptions) -> Result<Client, StoreError> {
        if options.separator.is_empty() {
            return Err(StoreError::invalid("redis: the separator is empty"));
        }
        let tls = Tls::read("redis", &options.tls)?;
        let certificates = tls_certificates(&tls);
        let nodes = options
            .nodes
            .iter()
            .map(|url| Node::new(url, options, &tls, certificates.as_ref()))
            .collect::<Result<Vec<Node>, StoreError>>()?;
        Ok(Client {
            nodes: Nodes::new("redis", nodes)?,
            connection: Mutex::default(),
            separator: options.separator.clone(),
            warned: AtomicBool::new(false),
        })
    }

    /// Runs `request` on (a handle to) the current connection. A connection that broke since
    /// it was last used (the node restarted) is replaced and the request sent once more.
    async fn run<T, Request, Answer>(&self, request: Request) -> Result<(Connected, T), StoreError>
    where
        Request: Fn(MultiplexedConnection) -> Answer,
        Answer: Future<Output = Result<T, Failure>>,
    {
        let mut retried = false;
        loop {
            let connected = self.connect().await?;
            match request(connected.connection.clone()).await {
                Ok(answer) => return Ok((connected, answer)),
                Err(failure) if failure.error.is_unrecoverable_error() && !retried => {
                    self.forget();
                    retried = true;
                }
                Err(failure) => return Err(self.failed(&connected, failure)),
            }
        }
    }

    /// The error for `failure` on `connected`'s node, which is dropped when it broke.
    fn failed(&self, connected: &Connected, failure: Failure) -> StoreError {
        if failure.error.is_unrecoverable_error() {
            self.forget();
        }
        StoreError::new(
            error_kind(&failure.error),
            format!(
                "{}: {}: {}",
                self.nodes[connected.index].name,
                failure.request,
                describe(&failure.error)
            ),
        )
    }

    /// The current connection, or a new one to the node the [`Nodes`] policy finds.
    async fn connect(&self) -> Result<Connected, StoreError> {
        if let Some(connected) = self.current() {
            return Ok(connected);
        }
        let config = &AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(REQUEST_TIMEOUT));
        let connected = self
            .nodes
            .ask(|index, node| async move {
                node.client
                    .get_multiplexed_async_connection_with_config(config)
                    .await
                    .map(|connection| Connected { index, connection })
                    .map_err(|e| {
                        StoreError::new(error_kind(&e), format!("{}: {}", node.name, describe(&e)))
                    })
            })
            .await?;
        *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(connected.clone());
        Ok(connected)
    }

    fn current(&self) -> Option<Connected> {
        self.connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn forget(&self) {
        *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Node {
    /// The node at `url`, with the options' credentials where the URL has none.
    fn new(
        url: &str,
        options: &RedisOptions,
        tls: &Tls,
        certificates: Option<&TlsCertificates>,
    ) -> Result<Node, StoreError> {
        let name = redact(url);
        let invalid = |message: String| StoreError::invalid(format!("redis: {name}: {message}"));
        let mut url = url.to_string();
        if tls.insecure() && url.starts_with("rediss://") && !url.contains('#') {
            url.push_str("#insecure");
        }
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|e| invalid(format!("not a Redis URL: {e}")))?;
        let mut settings = info.redis_settings().clone();
        if settings.username().is_none()
            && let Some(username) = &options.username
        {
            settings = settings.set_username(username);
        }
        if settings.password().is_none()
            && let Some(password) = &options.password
        {
            settings = settings.set_password(password);
        }
        if settings.username().is_some() && settings.password().is_none() {
            return Err(invalid("a user name needs a password".to_string()));
        }
        let db = settings.db();
        // Without TCP_NODELAY a small request can wait for the previous one's ACK.
        let info = info
            .set_redis_settings(settings)
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        let client = match certificates {
            Some(certificates) if tls => redis::Client::build_with_tls(info, certificates.clone()),
            _ => redis::Client::open(info),
        }
        .map_err(|e| invalid(e.to_string()))?;
        Ok(Node { name, client, db })
    }
}

/// The CA and client certificates of `tls` as Redis's client takes them, `None` when none is
/// given: Redis's client builds its TLS configuration itself, from the files' PEM.
fn tls_certificates(tls: &Tls) -> Option<TlsCertificates> {
    let client_tls = tls.identity_pem().map(|(cert, key)| ClientTlsConfig {
        client_cert: cert.to_vec(),
        client_key: key.to_vec(),
    });
    let root_cert = tls.ca_pem().map(<[u8]>::to_vec);
    if client_tls.is_none() && root_cert.is_none() {
        return None;
    }
    Some(TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// The kind of failure a Redis error stands for. Credentials the server refuses fail the
/// connection's `AUTH` (`WRONGPASS`, or a password given to a server without one); a server
/// that wants a password and got none answers `NOAUTH`, and an ACL user lacking a command or
/// key `NOPERM`. A server still loading its data or a replica without its master answers
/// for a moment only; any other error answer is a refusal that asking again will not change.
fn error_kind(error: &RedisError) -> StoreErrorKind {
    use redis::{ErrorKind, ServerErrorKind};
    match error.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => {
            StoreErrorKind::Auth
        }
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::TryAgain,
        ) => StoreErrorKind::Unreachable,
        ErrorKind::Server(_) | ErrorKind::RESP3NotSupported => StoreErrorKind::Rejected,
        ErrorKind::Extension => match error.code() {
            Some("NOAUTH" | "WRONGPASS" | "NOPERM") => StoreErrorKind::Auth,
            _ => StoreErrorKind::Rejected,
        },
        ErrorKind::InvalidClientConfig => StoreErrorKind::Invalid,
        // Connections that fail or break, timeouts, and answers that are not Redis's.
        _ => StoreErrorKind::Unreachable,
    }
}

/// `error` on one line; an answer that is not Redis's protocol says so, rather than quoting
/// the bytes it could not parse on lines of their own.
fn describe(error: &RedisError) -> String {
    if error.kind() == redis::ErrorKind::Parse {
        return "the node's answer is not Redis's protocol (RESP): is it a Redis server?"
            .to_string();
    }
    super::http::one_line(&error.to_string())
}

/// The Redis key name of a reconfd key: with a separator other than `/`, without the leading
/// `/` and with `/` replaced by the separator.
fn redis_key(key: &str, separator: &str) -> String {
    if separator == "/" {
        return key.to_string();
    }
    key.trim_start_matches('/').replace('/', separator)
}

/// The reconfd key of a Redis key name: the separator replaced by `/`, with a leading `/`.
fn reconfd_key(name: &str, separator: &str) -> String {
    if separator == "/" {
        return name.to_string();
    }
    let key = name.replace(separator, "/");
    if key.starts_with('/') {
        key
    } else {
        format!("/{key}")
    }
}

/// `text` with Redis's glob characters escaped, so that a pattern matches it literally.
fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if matches!(character, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

/// What a full read found.
struct Read {
    keys: Snapshot,
    /// For each hash, by Redis key name, the reconfd keys of its fields.
    hashes: HashMap<Vec<u8>, BTreeSet<String>>,
}

/// What one Redis key holds, as reconfd sees it.
enum Held {
    Text(Vec<u8>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
    /// No such key, or a type reconfd does not read (list, set, ...).
    Nothing,
}

/// Every key under `prefixes`.
async fn read_all(
    connection: &mut MultiplexedConnection,
    prefixes: &[String],
    separator: &str,
) -> Result<Read, Failure> {
    // Each page is read while the next is listed, so that Redis lists keys while reconfd
    // takes values apart. SCAN may list a key twice, and two prefixes may list the same
    // keys; such a key is simply read twice, which costs less than remembering every name.
    let mut reads = JoinSet::new();
    for prefix in prefixes {
        let pattern = format!("{}*", escape_glob(&redis_key(prefix, separator)));
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(connection)
                .await
                .map_err(Failure::of(format!("SCAN MATCH {pattern}")))?;
            for chunk in page.chunks(MGET_CHUNK) {
                let names = chunk.to_vec();
                let mut connection = connection.clone();
                reads.spawn(async move {
                    let values = redis::cmd("MGET")
                        .arg(&names)
                        .query_async::<Vec<Option<Vec<u8>>>>(&mut connection)
                        .await;
                    (names, values)
                });
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }

    let mut read = Read {
        keys: Snapshot::default(),
        hashes: HashMap::new(),
    };
    let mut others = Vec::new();
    while let Some(joined) = reads.join_next().await {
        let (names, values) = joined.map_err(|e| Failure {
            error: RedisError::from((redis::ErrorKind::Client, "lost", e.to_string())),
            request: "MGET".to_string(),
        })?;
        let values = values.map_err(Failure::of(format!("MGET of {} keys", names.len())))?;
        for (name, value) in names.into_iter().zip(values) {
            match value {
                Some(value) => record(&mut read, name, Held::Text(value), prefixes, separator),
                None => others.push(name),
            }
        }
    }
    for chunk in others.chunks(MAX_BATCH) {
        let held = read_keys(connection, chunk).await?;
        for (name, held) in chunk.iter().zip(held) {
            record(&mut read, name.clone(), held, prefixes, separator);
        }
    }
    Ok(read)
}

/// Adds what the Redis key `name` holds to `read`, keeping what lies under `prefixes`. Names
/// and fields that are not UTF-8 cannot be named by a template and are left out; values that
/// are not UTF-8 are kept as such, so the resources that see them fail naming them.
fn record(read: &mut Read, name: Vec<u8>, held: Held, prefixes: &[String], separator: &str) {
    let Ok(text) = std::str::from_utf8(&name) else {
        return;
    };
    let key = reconfd_key(text, separator);
    match held {
        Held::Text(bytes) => {
            if under_any(&key, prefixes) {
                read.keys.insert(key, value(bytes));
            }
        }
        Held::Hash(fields) => {
            let fields = hash_entries(&key, fields, prefixes);
            read.hashes
                .insert(name, fields.iter().map(|(key, _)| key.clone()).collect());
            for (key, value) in fields {
                read.keys.insert(key, value);
            }
        }
        Held::Nothing => {}
    }
}

/// The reconfd keys `<key>/<field>` of a hash's fields and their values, under `prefixes`.
fn hash_entries(
    key: &str,
    fields: BTreeMap<Vec<u8>, Vec<u8>>,
    prefixes: &[String],
) -> Vec<(String, KeyValue)> {
    fields
        .into_iter()
        .filter_map(|(field, bytes)| {
            let field = String::from_utf8(field).ok()?;
            let key = format!("{key}/{field}");
            under_any(&key, prefixes).then(|| (key, value(bytes)))
        })
        .collect()
}

/// What each of `names` holds, whatever its type, in one round trip: `GET` answers for a
/// string, `HGETALL` for a hash, and the other answers with an error that is expected.
async fn read_keys(
    connection: &mut MultiplexedConnection,
    names: &[Vec<u8>],
) -> Result<Vec<Held>, Failure> {
    let mut pipe = redis::pipe();
    for name in names {
        pipe.cmd("GET").arg(name).cmd("HGETALL").arg(name);
    }
    let answers: Vec<Value> = pipe
        .ignore_errors()
        .query_async(connection)
        .await
        .map_err(Failure::of(format!("GET/HGETALL of {} keys", names.len())))?;
    let mut answers = answers.into_iter();
    let mut held = Vec::with_capacity(names.len());
    for name in names {
        let (Some(get), Some(hgetall)) = (answers.next(), answers.next()) else {
            return Err(Failure {
                error: RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "fewer answers than requests",
                )),
                request: "GET/HGETALL".to_string(),
            });
        };
        let about = |command: &str| format!("{command} {}", String::from_utf8_lossy(name));
        held.push(match get {
            Value::BulkString(value) => Held::Text(value),
            Value::Nil => hash(hgetall).map_err(Failure::of(about("HGETALL")))?,
            Value::ServerError(error) if error.code() == "WRONGTYPE" => {
                hash(hgetall).map_err(Failure::of(about("HGETALL")))?
            }
            Value::ServerError(error) => return Err(Failure::of(about("GET"))(error.into())),
            other => {
                return Err(Failure::of(about("GET"))(RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "not a string",
                    format!("{other:?}"),
                ))));
            }
        });
    }
    Ok(held)
}

/// A key's `HGETALL` answer: its fields, or nothing for a key that is gone or not a hash.
fn hash(answer: Value) -> Result<Held, RedisError> {
    match answer {
        Value::ServerError(error) if error.code() == "WRONGTYPE" => Ok(Held::Nothing),
        Value::ServerError(error) => Err(error.into()),
        answer => {
            let fields: BTreeMap<Vec<u8>, Vec<u8>> = redis::from_redis_value(answer)?;
            Ok(if fields.is_empty() {
                Held::Nothing
            } else {
                Held::Hash(fields)
            })
        }
    }
}

/// Whether keyspace notifications are on.
enum Notifications {
    /// They already were.
    Enabled,
    /// The watch turned them on.
    TurnedOn { was: String, now: String },
    /// `CONFIG GET` was refused, with the server's reason: whether they are on is unknown.
    Unknown(String),
    /// They lack flags and `CONFIG SET` was refused, with the server's reason.
    Refused(String),
}

/// Turns on the keyspace notifications a watch needs, keeping every flag already set.
async fn enable_notifications(
    connection: &mut MultiplexedConnection,
) -> Result<Notifications, Failure> {
    const PARAMETER: &str = "notify-keyspace-events";
    let answer: Result<BTreeMap<String, String>, RedisError> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(PARAMETER)
        .query_async(connection)
        .await;
    let was = match answer {
        Ok(mut parameters) => parameters.remove(PARAMETER).unwrap_or_default(),
        // No answer in time, or a broken connection: the server is out of reach for now.
        Err(e) if error_kind(&e) == StoreErrorKind::Unreachable => {
            return Err(Failure::of("CONFIG GET")(e));
        }
        Err(e) => return Ok(Notifications::Unknown(format!("CONFIG GET: {e}"))),
    };
    let missing = missing_events(&was);
    if missing.is_empty() {
        return Ok(Notifications::Enabled);
    }
    let now = format!("{was}{missing}");
    match redis::cmd("CONFIG")
        .arg("SET")
        .arg(PARAMETER)
        .arg(&now)
        .query_async::<()>(connection)
        .await
    {
        Ok(()) => Ok(Notifications::TurnedOn { was, now }),
        Err(e) if error_kind(&e) == StoreErrorKind::Unreachable => {
            Err(Failure::of("CONFIG SET")(e))
        }
        Err(e) => Ok(Notifications::Refused(format!(
            "notify-keyspace-events is {was:?}; CONFIG SET: {e}"
        ))),
    }
}

/// The required flags that the `notify-keyspace-events` value `flags` lacks.
fn missing_events(flags: &str) -> String {
    let all = flags.contains('A');
    REQUIRED_EVENTS
        .chars()
        .filter(|flag| {
            let set = flags.contains(*flag) || (all && COVERED_BY_ALL.contains(*flag));
            !set
        })
        .collect()
}

/// The watch task's state: what it needs to turn notifications into changes.
struct Follower {
    client: Arc<Client>,
    connected: Connected,
    prefixes: Vec<String>,
    /// `__keyspace@<db>__:`, which each notification's channel starts with.
    channel_prefix: String,
    /// For each hash under the prefixes, by Redis key name, the reconfd keys of its fields:
    /// what to delete when a field or the hash goes.
    hashes: HashMap<Vec<u8>, BTreeSet<String>>,
    events: WatchSender,
}

impl Follower {
    /// Reports the notified keys' changes until the subscription or the connection breaks or
    /// the daemon stops listening. Ending the stream makes the daemon watch again, which reads
    /// everything again.
    async fn run(mut self, mut sink: PubSubSink, mut messages: PubSubStream) {
        let node = self.client.nodes[self.connected.index].name.clone();
        let mut probes = Probes::new();
        let ended = loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => match self.follow(message, &mut messages).await {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(reason) => break reason,
                    },
                    None => break format!("{node}: the notification connection closed"),
                },
                () = probes.due() => {
                    if let Err(reason) = Probes::check(&node, sink.ping::<Value>()).await {
                        break reason;
                    }
                }
                () = self.events.closed() => return,
            }
        };
        tracing::info!("redis: {ended}; watching again");
    }

    /// Reports the change `message` notified, with those of every message already received:
    /// a burst of changes becomes one event. False when the daemon stopped listening; an error
    /// when the watch has to end.
    async fn follow(
        &mut self,
        message: redis::Msg,
        messages: &mut PubSubStream,
    ) -> Result<bool, String> {
        let mut batch = Batch::default();
        batch.add(&self.channel_prefix, &message);
        let mut closed = false;
        while batch.names.len() < MAX_BATCH {
            match messages.next().now_or_never() {
                Some(Some(message)) => batch.add(&self.channel_prefix, &message),
                Some(None) => {
                    closed = true;
                    break;
                }
                None => break,
            }
        }
        let listening = self
            .report(batch.names)
            .await
            .map_err(|failure| self.client.failed(&self.connected, failure).to_string())?;
        if closed {
            let node = &self.client.nodes[self.connected.index].name;
            return Err(format!("{node}: the notification connection closed"));
        }
        Ok(listening)
    }

    /// Reads `names` again and sends what changed. False when the daemon stopped listening.
    async fn report(&mut self, names: Vec<Vec<u8>>) -> Result<bool, Failure> {
        let held = read_keys(&mut self.connected.connection, &names).await?;
        let mut changes = Vec::new();
        for (name, held) in names.into_iter().zip(held) {
            self.changes_of(name, held, &mut changes);
        }
        changes.retain(|change| under_any(change.key(), &self.prefixes));
        Ok(self.events.changes(None, changes).await)
    }

    /// The changes that bring the daemon's keys of the Redis key `name` to what it holds now.
    fn changes_of(&mut self, name: Vec<u8>, held: Held, changes: &mut Vec<Change>) {
        let Ok(text) = std::str::from_utf8(&name) else {
            return;
        };
        let key = reconfd_key(text, &self.client.separator);
        let old_fields = self.hashes.remove(&name).unwrap_or_default();
        let mut kept = BTreeSet::new();
        match held {
            Held::Text(bytes) => changes.push(Change::put(key.clone(), value(bytes))),
            Held::Hash(fields) => {
                // The key may have held a string before.
                changes.push(Change::Delete { key: key.clone() });
                for (field, value) in hash_entries(&key, fields, &self.prefixes) {
                    kept.insert(field.clone());
                    changes.push(Change::put(field, value));
                }
            }
            Held::Nothing => changes.push(Change::Delete { key }),
        }
        changes.extend(
            old_fields
                .difference(&kept)
                .map(|field| Change::Delete { key: field.clone() }),
        );
        if !kept.is_empty() {
            self.hashes.insert(name, kept);
        }
    }
}

/// The Redis keys named by a run of notifications, each once, in the order first notified.
#[derive(Default)]
struct Batch {
    names: Vec<Vec<u8>>,
    seen: HashSet<Vec<u8>>,
}

impl Batch {
    /// Adds the key `message` is about; messages on other channels are ignored.
    fn add(&mut self, channel_prefix: &str, message: &redis::Msg) {
        let Ok(channel) = message.get_channel::<Vec<u8>>() else {
            return;
        };
        if let Some(name) = channel.strip_prefix(channel_prefix.as_bytes())
            && self.seen.insert(name.to_vec())
        {
            self.names.push(name.to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of the server's error answer `line`, as the client parses it.
    fn answer(line: &str) -> RedisError {
        match redis::parse_redis_value(format!("-{line}\r\n").as_bytes()) {
            Ok(Value::ServerError(error)) => error.into(),
            other => panic!("not an error answer: {other:?}"),
        }
    }

    #[test]
    fn errors_map_to_kinds() {
        use redis::ErrorKind;
        let cases = [
            (
                RedisError::from((
                    ErrorKind::AuthenticationFailed,
                    "Password authentication failed",
                )),
                StoreErrorKind::Auth,
            ),
            (
                answer("WRONGPASS invalid username-password pair or user is disabled."),
                StoreErrorKind::Auth,
            ),
            (
                answer("NOAUTH Authentication required."),
                StoreErrorKind::Auth,
            ),
            (
                answer("NOPERM User reader has no permissions to run the 'scan' command"),
                StoreErrorKind::Auth,
            ),
            (
                answer("LOADING Redis is loading the dataset in memory"),
                StoreErrorKind::Unreachable,
            ),
            (
                answer(
                    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
                ),
                StoreErrorKind::Unreachable,
            ),
            (
                answer("ERR unknown command 'SCAN'"),
                StoreErrorKind::Rejected,
            ),
            (
                answer("MOVED 3999 127.0.0.1:6381"),
                StoreErrorKind::Rejected,
            ),
            (
                RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
                StoreErrorKind::Unreachable,
            ),
            (
                RedisError::from((ErrorKind::InvalidClientConfig, "bad TLS settings")),
                StoreErrorKind::Invalid,
            ),
        ];
        for (error, kind) in cases {
            assert_eq!(error_kind(&error), kind, "{error}");
        }
    }

    #[test]
    fn keys_map_to_redis_names_and_back() {
        assert_eq!(
            redis_key("/proxy/frontend/web1", "/"),
            "/proxy/frontend/web1"
        );
        assert_eq!(
            reconfd_key("/proxy/frontend/web1", "/"),
            "/proxy/frontend/web1"
        );
        assert_eq!(
            redis_key("/proxy/frontend/web1", ":"),
            "proxy:frontend:web1"
        );
        assert_eq!(
            reconfd_key("proxy:frontend:web1", ":"),
            "/proxy/frontend/web1"
        );
        assert_eq!(redis_key("/a/b", "::"), "a::b");
        assert_eq!(reconfd_key("a::b", "::"), "/a/b");
        // The whole key space, as prefix `/` asks.
        assert_eq!(redis_key("/", ":"), "");
        // A name that already starts with `/` keeps a single one.
        assert_eq!(reconfd_key("/a:b", ":"), "/a/b");
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(escape_glob("/app"), "/app");
        assert_eq!(escape_glob(r"/a*b?c[d]e\f"), r"/a\*b\?c\[d\]e\\f");
    }

    /// A server that stops answering (stopped, or its connection silently dropped) is out of
    /// reach, which the daemon asks again soon, and not a server refusing `CONFIG`, which it
    /// would poll until a SIGHUP.
    #[tokio::test]
    async fn a_server_that_does_not_answer_config_is_out_of_reach() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/test.sh)");
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("a URL");
        let config =
            AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_millis(300)));
        let mut attempts = 0;
        let mut connection = loop {
            match client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(connection) => break connection,
                // Until the server listens; a server that never does fails the test.
                Err(_) if attempts < 1_500 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("redis-server did not start: {e}"),
            }
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(server.id()).expect("a pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        let outcome = enable_notifications(&mut connection).await;
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
        let _ = server.kill();
        let _ = server.wait();
        match outcome {
            Err(failure) => {
                assert_eq!(error_kind(&failure.error), StoreErrorKind::Unreachable);
            }
            Ok(_) => panic!("no answer taken as the server's answer about CONFIG"),
        }
    }

    #[test]
    fn only_missing_notification_flags_are_added() {
        assert_eq!(missing_events(""), "Kg$hxe");
        assert_eq!(missing_events("Ex"), "Kg$he");
        assert_eq!(missing_events("AK"), "");
        assert_eq!(missing_events("AE"), "K");
        assert_eq!(missing_events("Kg$hxe"), "");
    }

    #[test]
    fn passwords_are_left_out_of_node_names() {
        let client = Client::new(&RedisOptions {
            nodes: vec![
                "redis://user:secret@10.0.0.1:6379/2".to_string(),
                "rediss://:p@ss@host:6380".to_string(),
            ],
            separator: "/".to_string(),
            ..RedisOptions::default()
        })
        .expect("valid options");
        let names: Vec<&str> = client.nodes.iter().map(|node| node.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "redis://user:***@10.0.0.1:6379/2",
                "rediss://:***@host:6380"
            ]
        );
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn names_map_to_keys_and_back(
            key in "(/[a-z:*?\\[\\]\\\\]{1,3}){1,4}",
            separator in prop::sample::select(&["/", ":", "::", "."][..]),
        ) {
            let name = redis_key(&key, separator);
            let back = reconfd_key(&name, separator);
            prop_assert!(back.starts_with('/'));
            // A key holding the separator's characters reads back otherwise, as in confd.
            if separator == "/" || !separator.chars().any(|c| key.contains(c)) {
                prop_assert_eq!(back.trim_end_matches('/'), key.trim_end_matches('/'));
            }
            let escaped = escape_glob(&name);
            prop_assert!(escaped.len() >= name.len());
        }

        #[test]
        fn hash_fields_of_any_bytes_are_keys_or_left_out(
            fields in prop::collection::btree_map(
                prop::collection::vec(any::<u8>(), 0..6),
                prop::collection::vec(any::<u8>(), 0..6),
                0..8,
            )
        ) {
            let named = fields.keys().filter(|field| std::str::from_utf8(field).is_ok()).count();
            let entries = hash_entries("/h", fields, &["/".to_string()]);
            prop_assert_eq!(entries.len(), named);
            prop_assert!(entries.iter().all(|(key, _)| key.starts_with("/h/")));
        }
    }
}
