//! The etcd v3 store, spoken over etcd's HTTP/JSON gateway (`/v3/kv/range`, `/v3/watch`).
//!
//! A fetch reads every prefix at one revision, in pages, so the snapshot is consistent and no
//! response is giant; the watch is in the `watch` module. Requests go to the node that
//! answered last and fail over to the next one when a node cannot be reached, has no leader,
//! or answers with something that is not etcd's (the [`Nodes`] policy).

mod proto;
// Used by the etcd store once it moves to gRPC.
#[cfg_attr(not(test), allow(dead_code))]
mod rpc;
mod watch;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::http::{self, error_chain};
use super::nodes::{Node, NodeFailure, Nodes};
use super::progress::Progress;
use super::tls::TlsOptions;
use super::{KeyMap, Snapshot, Store, StoreError, WatchStream};

/// Keys per range request: a page stays well under a megabyte of JSON.
const PAGE_SIZE: usize = 5000;

/// Ranges with more keys than this are read from both ends at once.
const SPLIT_ABOVE: i64 = 1000;

/// Limit for one unary request (a range page, an authentication).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// gRPC status codes that etcd's gateway reports in error bodies.
const CODE_OUT_OF_RANGE: i64 = 11;
const CODE_UNAVAILABLE: i64 = 14;
const CODE_UNAUTHENTICATED: i64 = 16;
const CODE_PERMISSION_DENIED: i64 = 7;

/// How to reach and authenticate to etcd.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EtcdOptions {
    /// Node URLs such as `http://127.0.0.1:2379`, tried in order.
    pub nodes: Vec<String>,
    /// User name for etcd's authentication, with `password`.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<String>,
    /// TLS settings for the nodes.
    pub tls: TlsOptions,
}

/// Reads keys from etcd v3.
pub struct EtcdStore {
    client: Arc<Client>,
}

impl EtcdStore {
    /// A store for the nodes and credentials in `options`. Fails when a TLS file cannot be
    /// read or parsed; no node is contacted yet.
    pub fn new(options: &EtcdOptions) -> Result<EtcdStore, StoreError> {
        Ok(EtcdStore {
            client: Arc::new(Client::new(options)?),
        })
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn fetch(&self, prefixes: &[String]) -> Result<Snapshot, StoreError> {
        self.client
            .fetch(prefixes)
            .await
            .map_err(EtcdError::into_store)
    }

    async fn watch(
        &self,
        prefixes: &[String],
        snapshot: &Snapshot,
    ) -> Result<Option<WatchStream>, StoreError> {
        watch::start(Arc::clone(&self.client), prefixes, snapshot)
            .await
            .map(Some)
            .map_err(EtcdError::into_store)
    }
}

/// Why a request to etcd failed, as far as failover and recovery care.
#[derive(Debug, thiserror::Error)]
enum EtcdError {
    /// No node could be reached, or none could serve the request (no quorum).
    #[error("{0}")]
    Unreachable(String),
    /// The revision asked for was compacted away.
    #[error("etcd: the revision was compacted")]
    Compacted,
    /// etcd answered with an error that another node would answer too.
    #[error("{0}")]
    Rejected(String),
    /// etcd refused the credentials, or the user may not read what was asked; another node
    /// would refuse them too.
    #[error("{0}")]
    Auth(String),
}

impl NodeFailure for EtcdError {
    fn is_unreachable(&self) -> bool {
        matches!(self, EtcdError::Unreachable(_))
    }

    fn every_node(message: String) -> EtcdError {
        EtcdError::Unreachable(message)
    }
}

impl EtcdError {
    fn into_store(self) -> StoreError {
        match self {
            EtcdError::Unreachable(_) | EtcdError::Compacted => {
                StoreError::unreachable(self.to_string())
            }
            EtcdError::Rejected(message) => StoreError::rejected(message),
            EtcdError::Auth(message) => StoreError::auth(message),
        }
    }
}

/// The HTTP client and the cluster's nodes, shared by the store and its watch task.
struct Client {
    http: reqwest::Client,
    nodes: Nodes<Node>,
    credentials: Option<(String, String)>,
    /// The current authentication token; cleared when etcd rejects it.
    token: Mutex<Option<String>>,
    /// For each watched prefix, the revision up to which its watcher delivered every change:
    /// a new watch of the prefix starts right after it.
    progress: Mutex<Progress>,
    /// Set once the user was told that etcd refuses a watch over the range covering every
    /// prefix, so transactions are gathered by waiting (said once, not at every reconnect).
    split_watch_told: AtomicBool,
}

impl Client {
    fn new(options: &EtcdOptions) -> Result<Client, StoreError> {
        let invalid = |message: String| StoreError::invalid(format!("etcd: {message}"));
        let nodes = http::nodes("etcd", &options.nodes)?;
        let credentials = match (&options.username, &options.password) {
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            (Some(_), None) => return Err(invalid("--username needs --password".to_string())),
            (None, Some(_)) => return Err(invalid("--password needs --username".to_string())),
            (None, None) => None,
        };
        let http = http::client("etcd", &options.tls, &nodes)?;
        Ok(Client {
            http,
            nodes,
            credentials,
            token: Mutex::new(None),
            progress: Mutex::default(),
            split_watch_told: AtomicBool::new(false),
        })
    }

    /// Every key under `prefixes`, all read at one revision.
    async fn fetch(&self, prefixes: &[String]) -> Result<Snapshot, EtcdError> {
        // A compaction between two pages invalidates the revision being read; starting over
        // reads at the new current revision. Compactions are minutes apart, so one more
        // attempt all but always does.
        let mut attempts_left = 3;
        loop {
            match self.fetch_at_one_revision(prefixes).await {
                Err(EtcdError::Compacted) if attempts_left > 1 => attempts_left -= 1,
                other => return other,
            }
        }
    }

    async fn fetch_at_one_revision(&self, prefixes: &[String]) -> Result<Snapshot, EtcdError> {
        let mut entries = KeyMap::new();
        let mut revision = 0;
        for prefix in prefixes {
            let (key, range_end) = prefix_range(prefix);
            // Counting first pins the revision and tells how to split the range.
            let counted: RangeResponse = self
                .call(
                    "/v3/kv/range",
                    &range_request(&key, &range_end, revision, Order::CountOnly),
                )
                .await?;
            if revision == 0 {
                revision = counted.header.revision;
            }
            // etcd's gateway spends most of a large range turning keys into JSON, on one core
            // per request. Reading the head of the range forwards and its tail backwards at
            // the same time puts a second core to work. A backwards read makes etcd sort the
            // whole range, so it is one page at most.
            let tail = if counted.count > SPLIT_ABOVE {
                (counted.count / 2).min(PAGE_SIZE as i64)
            } else {
                0
            };
            let (head, tail) = tokio::try_join!(
                self.read_forwards(&key, &range_end, revision, counted.count - tail),
                self.read_backwards(&key, &range_end, revision, tail),
            )?;
            for kv in head.into_iter().chain(tail) {
                if let Some((key, value)) = kv.decode() {
                    entries.insert(key, value);
                }
            }
        }
        Ok(Snapshot {
            entries,
            revision: Some(revision),
        })
    }

    /// The first `count` keys of `[key, range_end)` at `revision`, in pages.
    async fn read_forwards(
        &self,
        key: &[u8],
        range_end: &[u8],
        revision: i64,
        count: i64,
    ) -> Result<Vec<KeyValue>, EtcdError> {
        let mut read: Vec<KeyValue> = Vec::new();
        let mut from = key.to_vec();
        while (read.len() as i64) < count {
            let limit = (count - read.len() as i64).min(PAGE_SIZE as i64);
            let page: RangeResponse = self
                .call(
                    "/v3/kv/range",
                    &range_request(&from, range_end, revision, Order::Forwards(limit)),
                )
                .await?;
            let Some(last) = page.kvs.last() else {
                break;
            };
            // The next page starts right after the last key of this one.
            from = BASE64
                .decode(&last.key)
                .map_err(|e| EtcdError::Rejected(format!("etcd: bad key: {e}")))?;
            from.push(0);
            let more = page.more;
            read.extend(page.kvs);
            if !more {
                break;
            }
        }
        Ok(read)
    }

    /// The last `count` keys of `[key, range_end)` at `revision`, in one request.
    async fn read_backwards(
        &self,
        key: &[u8],
        range_end: &[u8],
        revision: i64,
        count: i64,
    ) -> Result<Vec<KeyValue>, EtcdError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let page: RangeResponse = self
            .call(
                "/v3/kv/range",
                &range_request(key, range_end, revision, Order::Backwards(count)),
            )
            .await?;
        Ok(page.kvs)
    }

    /// Sends a unary request, failing over across nodes, and parses the answer.
    async fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        request: &serde_json::Value,
    ) -> Result<T, EtcdError> {
        let body = &request.to_string();
        self.nodes
            .ask(move |_, node| self.call_node(node, path, body))
            .await
    }

    /// Sends a unary request to one node and parses the answer. A node that stops answering
    /// midway or answers with something other than etcd's JSON (a proxy's error page) counts as
    /// unreachable, so the next node is tried.
    async fn call_node<T: DeserializeOwned>(
        &self,
        node: &Node,
        path: &str,
        body: &str,
    ) -> Result<T, EtcdError> {
        let response = self
            .send_to(node, path, body, Some(REQUEST_TIMEOUT))
            .await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| EtcdError::Unreachable(format!("{node}: {}", error_chain(&e))))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| EtcdError::Unreachable(format!("{node}{path}: not etcd's answer: {e}")))
    }

    /// Posts to one node, authenticating first when needed and once more when etcd rejects
    /// the token (tokens expire).
    async fn send_to(
        &self,
        node: &Node,
        path: &str,
        body: &str,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, EtcdError> {
        let mut renewed = false;
        loop {
            let token = match &self.credentials {
                Some(_) => Some(self.token(node).await?),
                None => None,
            };
            let mut request = self
                .http
                .post(format!("{}{path}", node.address()))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
            if let Some(timeout) = timeout {
                request = request.timeout(timeout);
            }
            if let Some(token) = token {
                request = request.header(reqwest::header::AUTHORIZATION, token);
            }
            // A member cut off from its cluster's leader refuses the request (and ends a
            // watch) instead of serving what it last knew.
            request = request.header("Grpc-Metadata-Hasleader", "true");
            let response = request
                .send()
                .await
                .map_err(|e| EtcdError::Unreachable(format!("{node}: {}", error_chain(&e))))?;
            if response.status().is_success() {
                return Ok(response);
            }
            let status = response.status();
            let error: GatewayError = response.json().await.unwrap_or_default();
            let message = format!("{node}{path}: {}", error.text(status));
            match error.code {
                CODE_UNAUTHENTICATED if self.credentials.is_some() && !renewed => {
                    self.forget_token();
                    renewed = true;
                }
                CODE_UNAVAILABLE => return Err(EtcdError::Unreachable(message)),
                CODE_UNAUTHENTICATED | CODE_PERMISSION_DENIED => {
                    return Err(EtcdError::Auth(message));
                }
                _ if matches!(
                    status,
                    reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN
                ) =>
                {
                    return Err(EtcdError::Auth(message));
                }
                CODE_OUT_OF_RANGE if error.text(status).contains("compacted") => {
                    return Err(EtcdError::Compacted);
                }
                _ if matches!(
                    status,
                    reqwest::StatusCode::BAD_GATEWAY
                        | reqwest::StatusCode::SERVICE_UNAVAILABLE
                        | reqwest::StatusCode::GATEWAY_TIMEOUT
                ) =>
                {
                    return Err(EtcdError::Unreachable(message));
                }
                _ => return Err(EtcdError::Rejected(message)),
            }
        }
    }

    /// The current token, authenticating on `node` when there is none.
    async fn token(&self, node: &Node) -> Result<String, EtcdError> {
        if let Some(token) = self.current_token() {
            return Ok(token);
        }
        let Some((user, password)) = &self.credentials else {
            return Err(EtcdError::Rejected("etcd: no credentials".to_string()));
        };
        let response = self
            .http
            .post(format!("{}/v3/auth/authenticate", node.address()))
            .timeout(REQUEST_TIMEOUT)
            .json(&json!({"name": user, "password": password}))
            .send()
            .await
            .map_err(|e| EtcdError::Unreachable(format!("{node}: {}", error_chain(&e))))?;
        let status = response.status();
        if !status.is_success() {
            let error: GatewayError = response.json().await.unwrap_or_default();
            let message = format!("{node}: etcd refused user `{user}`: {}", error.text(status));
            return Err(if error.code == CODE_UNAVAILABLE {
                EtcdError::Unreachable(message)
            } else {
                EtcdError::Auth(message)
            });
        }
        let answer: AuthenticateResponse = response.json().await.map_err(|e| {
            EtcdError::Rejected(format!("{node}: unexpected authentication answer: {e}"))
        })?;
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer.token.clone());
        Ok(answer.token)
    }

    fn current_token(&self) -> Option<String> {
        self.token.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn forget_token(&self) {
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// What the watches delivered, for each prefix.
    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a range request asks for.
enum Order {
    /// Only the number of keys.
    CountOnly,
    /// Up to this many keys, from the start of the range.
    Forwards(i64),
    /// Up to this many keys, from the end of the range.
    Backwards(i64),
}

/// A `/v3/kv/range` request body; `revision` 0 means the current one.
fn range_request(key: &[u8], range_end: &[u8], revision: i64, order: Order) -> serde_json::Value {
    let mut request = json!({
        "key": BASE64.encode(key),
        "range_end": BASE64.encode(range_end),
    });
    if revision > 0 {
        request["revision"] = json!(revision.to_string());
    }
    match order {
        Order::CountOnly => request["count_only"] = json!(true),
        Order::Forwards(limit) => request["limit"] = json!(limit.to_string()),
        Order::Backwards(limit) => {
            request["limit"] = json!(limit.to_string());
            request["sort_order"] = json!("DESCEND");
            request["sort_target"] = json!("KEY");
        }
    }
    request
}

/// `[key, range_end)` covering every key that starts with `prefix`, as etcd's clients compute
/// it: the prefix with its last byte below 0xff incremented.
fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        // Key "\0" with range end "\0" is etcd's spelling of every key.
        return (vec![0], vec![0]);
    }
    let key = prefix.as_bytes().to_vec();
    let mut end = key.clone();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (key, end);
        }
    }
    (key, vec![0])
}

/// etcd's JSON spells 64-bit integers as strings.
fn int64<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int64 {
        Text(String),
        Number(i64),
    }
    match Int64::deserialize(deserializer)? {
        Int64::Number(number) => Ok(number),
        Int64::Text(text) => text.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Debug, Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<KeyValue>,
    #[serde(default)]
    more: bool,
    #[serde(default, deserialize_with = "int64")]
    count: i64,
}

#[derive(Debug, Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int64")]
    mod_revision: i64,
}

impl KeyValue {
    /// The key and value as text. A key that is not UTF-8 cannot be named by a template and
    /// is skipped; a value that is not UTF-8 is kept with replacement characters.
    fn decode(&self) -> Option<(String, String)> {
        let key = String::from_utf8(BASE64.decode(&self.key).ok()?).ok()?;
        let value = BASE64.decode(&self.value).ok()?;
        Some((key, String::from_utf8_lossy(&value).into_owned()))
    }
}

#[derive(Debug, Deserialize)]
struct AuthenticateResponse {
    token: String,
}

/// The gateway's error body.
#[derive(Debug, Default, Deserialize)]
struct GatewayError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    code: i64,
}

impl GatewayError {
    fn text(&self, status: reqwest::StatusCode) -> String {
        if !self.message.is_empty() {
            self.message.clone()
        } else if !self.error.is_empty() {
            self.error.clone()
        } else {
            format!("HTTP {status}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_cover_exactly_the_prefix() {
        assert_eq!(prefix_range("/app"), (b"/app".to_vec(), b"/apq".to_vec()));
        assert_eq!(prefix_range("/"), (b"/".to_vec(), b"0".to_vec()));
        assert_eq!(prefix_range(""), (vec![0], vec![0]));
    }
}
