//! The Consul store: the KV store, read with `?recurse`, and the service catalog, both
//! followed with blocking queries.
//!
//! KV keys map onto reconfd keys with a leading `/` (`service/web/port` is
//! `/service/web/port`). The catalog appears as keys under [`SERVICES_ROOT`], laid out as
//! [`super::catalog`] describes. A resource reads the catalog by listing `/_consul/services`
//! (every service) or `/_consul/services/<name>` in its `keys`; only what resources list is
//! read and watched.
//!
//! Consul has no change feed: a blocking query returns the whole prefix (or service) when
//! anything in it changed, so the watch keeps what it last saw of each and reports the
//! difference. A watch started again after a failure begins with a query that returns at once,
//! so whatever changed meanwhile is reported too. The watch counts as open once each of these
//! first queries has answered: an agent out of reach, or a token refused, fails the watch
//! itself, as it does for the stores that read as they open a watch.

pub mod lease;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::catalog::{Instance, SERVICES_ROOT};
use super::http::{self, one_line};
use super::nodes::{Node, Nodes};
use super::tls::TlsOptions;
use super::watch::{self, WatchSender};
use super::{Change, Snapshot, Store, StoreError, StoreErrorKind, Value, WatchStream, under_any};

/// Keys and their values as one source of the store reads them: what a watch compares.
type Values = BTreeMap<String, Value>;

/// How long a blocking query may wait for a change (Consul adds a little jitter).
const BLOCKING_WAIT: &str = "5m";

/// Limit for a blocking query: the wait, Consul's jitter, and a margin.
const BLOCKING_TIMEOUT: Duration = Duration::from_secs(5 * 60 + 30);

/// The header by which Consul tells that its ACLs left entries out of an answer.
const FILTERED_HEADER: &str = "X-Consul-Results-Filtered-By-ACLs";

/// Limit for a plain query.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach Consul.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConsulOptions {
    /// Agent URLs such as `http://127.0.0.1:8500`, tried in order.
    pub nodes: Vec<String>,
    /// ACL token.
    pub token: Option<String>,
    /// Where the token came from, named when the ACLs refuse or filter an answer.
    pub token_source: TokenSource,
    /// Datacenter to read from; the agent's own when `None`.
    pub datacenter: Option<String>,
    /// User and password for HTTP basic authentication (a proxy in front of the agents), as
    /// confd's `-basic-auth` sends them.
    pub basic_auth: Option<(String, String)>,
    /// TLS settings.
    pub tls: TlsOptions,
}

/// Where the ACL token came from: an answer the ACLs refused or filtered names it, since the
/// fix is to that token's policy (or to giving a token at all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TokenSource {
    /// No token: Consul answers with its anonymous token's rights.
    #[default]
    Anonymous,
    /// `--auth-token`, `RECONFD_AUTH_TOKEN` or `auth_token` in the settings.
    Settings,
    /// Consul's own `CONSUL_HTTP_TOKEN`.
    Environment,
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenSource::Anonymous => "no token was given, so Consul used its anonymous token",
            TokenSource::Settings => "the token of auth_token (--auth-token, RECONFD_AUTH_TOKEN)",
            TokenSource::Environment => "the token of CONSUL_HTTP_TOKEN",
        })
    }
}

/// Reads Consul's KV store and service catalog.
pub struct ConsulStore {
    client: Arc<Client>,
}

impl ConsulStore {
    /// A store for `options`; no connection is made yet.
    pub fn new(options: &ConsulOptions) -> Result<ConsulStore, StoreError> {
        Ok(ConsulStore {
            client: Arc::new(Client::new(options)?),
        })
    }
}

#[async_trait]
impl Store for ConsulStore {
    fn name(&self) -> &'static str {
        "consul"
    }

    async fn fetch(&self, prefixes: &[String]) -> Result<Snapshot, StoreError> {
        let mut values = Values::new();
        for source in sources(prefixes) {
            values.extend(source.read_now(&self.client).await?);
        }
        Ok(values
            .into_iter()
            .filter(|(key, _)| under_any(key, prefixes))
            .collect())
    }

    async fn watch(
        &self,
        prefixes: &[String],
        snapshot: &Snapshot,
    ) -> Result<Option<WatchStream>, StoreError> {
        let (events, stream) = watch::channel();
        let sources = sources(prefixes);
        let (answered, mut first_answers) = mpsc::channel(sources.len().max(1));
        let mut loops = JoinSet::new();
        let mut waiting = sources.len();
        for source in sources {
            let known = source.known(snapshot, prefixes);
            loops.spawn(source.follow(
                Arc::clone(&self.client),
                prefixes.to_vec(),
                known,
                events.clone(),
                answered.clone(),
            ));
        }
        drop(answered);
        // A stream whose queries fail at once would end at once, again and again, without
        // the daemon learning why; failing the watch instead tells it, and it paces its
        // attempts by the kind of failure.
        while waiting > 0 {
            tokio::select! {
                Some(()) = first_answers.recv() => waiting -= 1,
                Some(ended) = loops.join_next() => match ended {
                    Ok(Err(error)) => return Err(error),
                    // The stream is held here, so a loop ends early only by failing.
                    Ok(Ok(())) => {}
                    Err(e) => {
                        let message = format!("consul: the watch failed: {e}");
                        return Err(StoreError::unreachable(message));
                    }
                },
                else => break,
            }
        }
        tokio::spawn(async move {
            // The first loop to end (its query failed, or the daemon stopped listening) ends
            // the watch; dropping the set stops the others, and the stream ends with them.
            if let Some(Ok(Err(reason))) = loops.join_next().await {
                tracing::info!("consul: {reason}; watching again");
            }
        });
        Ok(Some(stream))
    }
}

/// One thing a blocking query follows.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    /// KV keys starting with this Consul key prefix (no leading `/`).
    Kv(String),
    /// The services whose names start with this text.
    Catalog(String),
}

/// What the watch needs to follow for `prefixes`.
fn sources(prefixes: &[String]) -> Vec<Source> {
    let mut sources = Vec::new();
    for prefix in prefixes {
        if let Some(rest) = prefix.strip_prefix(SERVICES_ROOT) {
            // `/_consul/services/web/node1` still needs all of `web`; a name has no `/`.
            let name = rest.trim_start_matches('/').split('/').next().unwrap_or("");
            sources.push(Source::Catalog(name.to_string()));
        } else {
            sources.push(Source::Kv(prefix.trim_start_matches('/').to_string()));
            if SERVICES_ROOT.starts_with(prefix.as_str()) {
                // `/` (or `/_consul`) covers the catalog too.
                sources.push(Source::Catalog(String::new()));
            }
        }
    }
    sources.sort_by_key(|source| format!("{source:?}"));
    sources.dedup();
    sources
}

impl Source {
    /// Reads the source's keys once, without blocking.
    async fn read_now(&self, client: &Client) -> Result<Values, StoreError> {
        match self {
            Source::Kv(prefix) => Ok(client.kv(prefix, None).await?.0),
            Source::Catalog(name_prefix) => {
                let (names, _) = client.service_names(name_prefix, None).await?;
                let mut values = Values::new();
                for name in names {
                    values.extend(client.service(&name, None).await?.0);
                }
                Ok(values)
            }
        }
    }

    /// The keys of `snapshot` this source reports on, to compare its first answer with.
    fn known(&self, snapshot: &Snapshot, prefixes: &[String]) -> Values {
        let root = match self {
            Source::Kv(prefix) => format!("/{prefix}"),
            Source::Catalog(name_prefix) => format!("{SERVICES_ROOT}/{name_prefix}"),
        };
        snapshot
            .values_under(&root)
            .filter(|(key, _)| {
                under_any(key, prefixes)
                    && (matches!(self, Source::Catalog(_)) || !key.starts_with(SERVICES_ROOT))
            })
            .map(|(key, value)| (key.to_string(), value))
            .collect()
    }

    /// Follows the source until a query fails or the daemon stops listening; reports every
    /// difference from `known` as changes. Tells `answered` once its first query answered.
    async fn follow(
        self,
        client: Arc<Client>,
        prefixes: Vec<String>,
        known: Values,
        events: WatchSender,
        answered: mpsc::Sender<()>,
    ) -> Result<(), StoreError> {
        match self {
            Source::Kv(prefix) => {
                follow_kv(&client, &prefix, &prefixes, known, &events, answered).await
            }
            Source::Catalog(name_prefix) => {
                follow_catalog(client, name_prefix, prefixes, known, events, answered).await
            }
        }
    }
}

async fn follow_kv(
    client: &Client,
    prefix: &str,
    prefixes: &[String],
    mut known: Values,
    events: &WatchSender,
    answered: mpsc::Sender<()>,
) -> Result<(), StoreError> {
    let mut answered = Some(answered);
    let mut index = None;
    loop {
        let (mut current, next) = client.kv(prefix, index).await?;
        // Told before the report, which may wait for the daemon to read the stream.
        if let Some(answered) = answered.take() {
            let _ = answered.try_send(());
        }
        // KV keys under the reserved catalog root are not KV data for reconfd.
        current.retain(|key, _| under_any(key, prefixes) && !key.starts_with(SERVICES_ROOT));
        if !report(events, &known, &current).await {
            return Ok(());
        }
        known = current;
        index = Some(next_index(index, next));
    }
}

/// Follows the list of services (names starting with `name_prefix`) and each of them. A
/// service's own query reports its instances going away, deregistration included, so a
/// service once followed stays followed.
async fn follow_catalog(
    client: Arc<Client>,
    name_prefix: String,
    prefixes: Vec<String>,
    known: Values,
    events: WatchSender,
    answered: mpsc::Sender<()>,
) -> Result<(), StoreError> {
    let mut answered = Some(answered);
    // Services the snapshot holds are followed even if they are gone by now, so that their
    // instances are reported gone.
    let mut to_follow: BTreeSet<String> = known
        .keys()
        .filter_map(|key| {
            let rest = key.strip_prefix(SERVICES_ROOT)?.strip_prefix('/')?;
            Some(rest.split('/').next()?.to_string())
        })
        .collect();
    let mut followed: BTreeSet<String> = BTreeSet::new();
    let mut services = JoinSet::new();
    let mut index = None;
    loop {
        let (names, next) = tokio::select! {
            listed = client.service_names(&name_prefix, index) => listed?,
            // A service's query failed: the whole watch starts over.
            Some(Ok(Err(reason))) = services.join_next() => return Err(reason),
            () = events.closed() => return Ok(()),
        };
        if let Some(answered) = answered.take() {
            let _ = answered.try_send(());
        }
        to_follow.extend(names);
        for name in std::mem::take(&mut to_follow) {
            if followed.insert(name.clone()) {
                services.spawn(follow_service(
                    Arc::clone(&client),
                    name.clone(),
                    prefixes.clone(),
                    known_under(&known, &service_root(&name)),
                    events.clone(),
                ));
            }
        }
        index = Some(next_index(index, next));
    }
}

async fn follow_service(
    client: Arc<Client>,
    name: String,
    prefixes: Vec<String>,
    mut known: Values,
    events: WatchSender,
) -> Result<(), StoreError> {
    let mut index = None;
    loop {
        let (mut current, next) = client.service(&name, index).await?;
        current.retain(|key, _| under_any(key, &prefixes));
        if !report(&events, &known, &current).await {
            return Ok(());
        }
        known = current;
        index = Some(next_index(index, next));
    }
}

fn service_root(name: &str) -> String {
    format!("{SERVICES_ROOT}/{name}/")
}

fn known_under(known: &Values, root: &str) -> Values {
    known
        .range(root.to_string()..)
        .take_while(|(key, _)| key.starts_with(root))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// The index for the next blocking query, as Consul's documentation asks: an index that went
/// backwards (a restored or re-elected server) starts over with a query that returns at once,
/// and an index is never below 1.
fn next_index(previous: Option<u64>, returned: u64) -> u64 {
    match previous {
        Some(previous) if returned < previous => 0,
        _ => returned.max(1),
    }
}

/// Sends the differences between `before` and `after`; false when the daemon stopped
/// listening.
async fn report(events: &WatchSender, before: &Values, after: &Values) -> bool {
    let mut changes: Vec<Change> = after
        .iter()
        .filter(|(key, value)| before.get(*key) != Some(*value))
        .map(|(key, value)| Change::put(key.clone(), value.clone()))
        .collect();
    changes.extend(
        before
            .keys()
            .filter(|key| !after.contains_key(*key))
            .map(|key| Change::Delete { key: key.clone() }),
    );
    events.changes(None, changes).await
}

/// The HTTP client and the agents, shared by the store and its watch tasks.
struct Client {
    http: reqwest::Client,
    nodes: Nodes<Node>,
    token: Option<String>,
    token_source: TokenSource,
    datacenter: Option<String>,
    basic_auth: Option<(String, String)>,
}

impl Client {
    /// The client of `options`' nodes; no connection is made yet.
    fn new(options: &ConsulOptions) -> Result<Client, StoreError> {
        let nodes = http::nodes("consul", &options.nodes)?;
        Ok(Client {
            http: http::client("consul", &options.tls, &nodes)?,
            nodes,
            token: options.token.clone(),
            token_source: options.token_source,
            datacenter: options.datacenter.clone(),
            basic_auth: options.basic_auth.clone(),
        })
    }

    /// A `method` request for `path` on `node` with `query`, in the datacenter asked for,
    /// with the ACL token and the basic authentication the settings give.
    fn request(
        &self,
        method: reqwest::Method,
        node: &Node,
        path: &str,
        query: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{path}", node.address()))
            .query(query);
        if let Some(datacenter) = &self.datacenter {
            request = request.query(&[("dc", datacenter)]);
        }
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token);
        }
        if let Some((username, password)) = &self.basic_auth {
            request = request.basic_auth(username, Some(password));
        }
        request
    }

    /// The KV keys under `prefix`, as reconfd keys, and the index to block on next.
    async fn kv(&self, prefix: &str, index: Option<u64>) -> Result<(Values, u64), StoreError> {
        let path = format!("/v1/kv/{}", encode_path(prefix));
        let (body, next) = self.get(&path, &[("recurse", "")], index).await?;
        let entries: Vec<KvEntry> = match body {
            Some(body) => parse(&path, &body)?,
            None => Vec::new(),
        };
        let keys = kv_keys(&path, entries)?;
        Ok((keys, next))
    }

    /// The names of the registered services starting with `name_prefix`.
    async fn service_names(
        &self,
        name_prefix: &str,
        index: Option<u64>,
    ) -> Result<(Vec<String>, u64), StoreError> {
        let path = "/v1/catalog/services";
        let (body, next) = self.get(path, &[], index).await?;
        let services: BTreeMap<String, Vec<String>> = match body {
            Some(body) => parse(path, &body)?,
            None => BTreeMap::new(),
        };
        Ok((
            services
                .into_keys()
                .filter(|name| name.starts_with(name_prefix))
                .collect(),
            next,
        ))
    }

    /// Every instance of service `name`, healthy or not, as keys.
    async fn service(&self, name: &str, index: Option<u64>) -> Result<(Values, u64), StoreError> {
        let path = format!("/v1/health/service/{}", encode_path(name));
        let (body, next) = self.get(&path, &[], index).await?;
        let entries: Vec<HealthEntry> = match body {
            Some(body) => parse(&path, &body)?,
            None => Vec::new(),
        };
        let keys = entries
            .into_iter()
            .filter_map(|entry| {
                let instance = Instance::from(entry);
                let key = format!("{}{}/{}", service_root(name), instance.node, instance.id);
                Some((key, Ok(serde_json::to_string(&instance).ok()?)))
            })
            .collect();
        Ok((keys, next))
    }

    /// GETs `path` from the first agent that answers; a blocking query when `index` is set.
    /// Returns the body (`None` for Consul's 404 of an empty KV prefix) and `X-Consul-Index`.
    async fn get(
        &self,
        path: &str,
        query: &[(&str, &str)],
        index: Option<u64>,
    ) -> Result<(Option<Vec<u8>>, u64), StoreError> {
        self.nodes
            .ask(|_, node| self.get_from(node, path, query, index))
            .await
    }

    async fn get_from(
        &self,
        node: &Node,
        path: &str,
        query: &[(&str, &str)],
        index: Option<u64>,
    ) -> Result<(Option<Vec<u8>>, u64), StoreError> {
        let mut request = self.request(reqwest::Method::GET, node, path, query);
        request = match index {
            Some(index) => request
                .query(&[
                    ("index", index.to_string().as_str()),
                    ("wait", BLOCKING_WAIT),
                ])
                .timeout(BLOCKING_TIMEOUT),
            None => request.timeout(REQUEST_TIMEOUT),
        };
        let unreachable = |e: reqwest::Error| http::failure(&format!("{node}{path}"), &e);
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let next = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|value| value.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        let filtered = response
            .headers()
            .get(FILTERED_HEADER)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"true"));
        let body = response.bytes().await.map_err(unreachable)?;
        // What the ACLs left out would read as keys deleted or servers gone: the files would
        // lose them. Only the whole answer is data.
        if filtered {
            return Err(StoreError::auth(format!(
                "{node}{path}: the ACLs hid part of the answer ({FILTERED_HEADER}: true); {} \
                 and its policy may not read all of it",
                self.token_source
            )));
        }
        if status.is_success() {
            return Ok((Some(body.to_vec()), next));
        }
        if status == reqwest::StatusCode::NOT_FOUND && path.starts_with("/v1/kv/") {
            return Ok((None, next));
        }
        let text = one_line(&String::from_utf8_lossy(&body));
        let kind = answer_kind(status, &text);
        let message = if kind == StoreErrorKind::Auth {
            format!(
                "{node}{path}: HTTP {status}: {text} (the ACLs refused it; {})",
                self.token_source
            )
        } else {
            format!("{node}{path}: HTTP {status}: {text}")
        };
        Err(StoreError::new(kind, message))
    }
}

/// The kind of failure an error answer of an agent stands for. A missing, unknown or
/// insufficient ACL token is "ACL not found" or "Permission denied", with a 403, or with a 500
/// when the agent forwarded the query to a server that refused it. An unknown datacenter is a
/// 500 too, which no other agent answers differently.
fn answer_kind(status: reqwest::StatusCode, text: &str) -> StoreErrorKind {
    let lower = text.to_ascii_lowercase();
    if lower.contains("acl not found") || lower.contains("permission denied") {
        StoreErrorKind::Auth
    } else if lower.contains("no path to datacenter") {
        StoreErrorKind::Rejected
    } else {
        http::status_kind(status)
    }
}

/// The KV entries of an answer to `path` as keys. A folder is a key ending in `/`, not a key
/// in its own right; a key holding the empty string comes with a null value and is a key like
/// any other.
fn kv_keys(path: &str, entries: Vec<KvEntry>) -> Result<Values, StoreError> {
    let mut keys = Values::new();
    for entry in entries {
        if entry.key.ends_with('/') {
            continue;
        }
        let value = match entry.value {
            Some(encoded) => BASE64.decode(encoded).map_err(|e| {
                StoreError::unreachable(format!(
                    "consul {path}: key `{}` holds a value that is not base64: {e}",
                    entry.key
                ))
            })?,
            None => Vec::new(),
        };
        keys.insert(format!("/{}", entry.key), super::value(value));
    }
    Ok(keys)
}

/// A key as a URL path, each segment percent-encoded.
fn encode_path(key: &str) -> String {
    key.split('/')
        .map(|segment| {
            segment
                .bytes()
                .map(|byte| match byte {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (byte as char).to_string()
                    }
                    _ => format!("%{byte:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn parse<T: serde::de::DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(body)
        .map_err(|e| StoreError::unreachable(format!("consul {path}: unexpected answer: {e}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KvEntry {
    key: String,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: HealthNode,
    service: HealthService,
    #[serde(default)]
    checks: Vec<HealthCheck>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthNode {
    node: String,
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthCheck {
    status: String,
}

impl From<HealthEntry> for Instance {
    fn from(entry: HealthEntry) -> Instance {
        Instance {
            name: entry.service.service,
            id: entry.service.id,
            address: if entry.service.address.is_empty() {
                entry.node.address
            } else {
                entry.service.address
            },
            node: entry.node.node,
            port: entry.service.port,
            tags: entry.service.tags.unwrap_or_default(),
            meta: entry.service.meta.unwrap_or_default(),
            passing: entry.checks.iter().all(|check| check.status == "passing"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn prefixes_become_kv_and_catalog_sources() {
        assert_eq!(
            sources(&strings(&["/app", "/_consul/services/web"])),
            [Source::Catalog("web".into()), Source::Kv("app".into())]
        );
        assert_eq!(
            sources(&strings(&["/"])),
            [Source::Catalog(String::new()), Source::Kv(String::new())],
            "the root covers the catalog too"
        );
        assert_eq!(
            sources(&strings(&["/_consul/services"])),
            [Source::Catalog(String::new())]
        );
    }

    #[test]
    fn error_answers_map_to_kinds() {
        use reqwest::StatusCode;
        let cases = [
            (StatusCode::FORBIDDEN, "ACL not found", StoreErrorKind::Auth),
            (
                StatusCode::FORBIDDEN,
                "Permission denied: token with AccessorID '00000000' lacks permission 'key:read'",
                StoreErrorKind::Auth,
            ),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "rpc error making call: rpc error making call: Permission denied",
                StoreErrorKind::Auth,
            ),
            (StatusCode::UNAUTHORIZED, "", StoreErrorKind::Auth),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "No path to datacenter",
                StoreErrorKind::Rejected,
            ),
            (
                StatusCode::BAD_REQUEST,
                "Invalid wait time",
                StoreErrorKind::Rejected,
            ),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "No cluster leader",
                StoreErrorKind::Unreachable,
            ),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "",
                StoreErrorKind::Unreachable,
            ),
        ];
        for (status, text, kind) in cases {
            assert_eq!(answer_kind(status, text), kind, "{status} {text}");
        }
    }

    #[test]
    fn the_index_starts_over_when_it_goes_backwards() {
        assert_eq!(next_index(None, 0), 1);
        assert_eq!(next_index(Some(10), 12), 12);
        assert_eq!(next_index(Some(10), 3), 0);
    }

    #[test]
    fn an_empty_value_is_a_key_and_a_folder_is_not() {
        let entries: Vec<KvEntry> = serde_json::from_str(
            r#"[{"Key":"app/","Value":null},{"Key":"app/empty","Value":null},
                {"Key":"app/port","Value":"ODA="}]"#,
        )
        .expect("parses");
        let keys = kv_keys("/v1/kv/app", entries).expect("keys");
        assert_eq!(
            keys.into_iter().collect::<Vec<_>>(),
            [
                ("/app/empty".to_string(), Ok(String::new())),
                ("/app/port".to_string(), Ok("80".to_string()))
            ]
        );
        let bad: Vec<KvEntry> =
            serde_json::from_str(r#"[{"Key":"app/x","Value":"%%"}]"#).expect("parses");
        let error = kv_keys("/v1/kv/app", bad).expect_err("not base64");
        assert!(error.to_string().contains("app/x"), "{error}");
    }

    #[test]
    fn key_segments_are_encoded_for_the_url() {
        assert_eq!(encode_path("app/my key/é"), "app/my%20key/%C3%A9");
    }

    #[test]
    fn an_instance_without_an_address_takes_its_nodes() {
        let entry: HealthEntry = serde_json::from_str(
            r#"{"Node":{"Node":"n1","Address":"10.0.0.1"},
                "Service":{"ID":"web-1","Service":"web","Address":"","Port":80,"Tags":null,"Meta":null},
                "Checks":[{"Status":"passing"},{"Status":"critical"}]}"#,
        )
        .expect("parses");
        let instance = Instance::from(entry);
        assert_eq!(instance.address, "10.0.0.1");
        assert!(!instance.passing, "one failing check makes it unhealthy");
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::arbitrary;

    /// The names in Consul's KV and health answers.
    const NAMES: &[&str] = &[
        "Key",
        "Value",
        "Flags",
        "Node",
        "Address",
        "Service",
        "ID",
        "Service",
        "Port",
        "Tags",
        "Checks",
        "Status",
        "ServiceID",
    ];

    proptest! {
        #[test]
        fn answers_parse_or_fail_naming_the_path(
            answer in prop_oneof![
                arbitrary::json(NAMES).prop_map(|json| json.to_string().into_bytes()),
                prop::collection::vec(any::<u8>(), 0..48),
            ]
        ) {
            let path = "/v1/kv/app";
            match parse::<Vec<KvEntry>>(path, &answer) {
                Ok(entries) => {
                    for entry in entries {
                        if let Some(Ok(bytes)) = entry.value.map(|text| BASE64.decode(text)) {
                            let _ = super::super::value(bytes);
                        }
                    }
                }
                Err(e) => prop_assert!(e.to_string().starts_with("consul /v1/kv/app: "), "{e}"),
            }
            let path = "/v1/health/service/web";
            match parse::<Vec<HealthEntry>>(path, &answer) {
                Ok(entries) => {
                    for entry in entries {
                        let instance = Instance::from(entry);
                        prop_assert!(serde_json::to_string(&instance).is_ok());
                    }
                }
                Err(e) => prop_assert!(e.to_string().contains(path), "{e}"),
            }
            if let Err(e) = parse::<BTreeMap<String, Vec<String>>>("/v1/catalog/services", &answer) {
                prop_assert!(e.to_string().contains("/v1/catalog/services"), "{e}");
            }
        }

        #[test]
        fn any_prefixes_make_sources_without_panic(
            prefixes in prop::collection::vec("(/_consul/services)?[/a-z_]{0,8}", 0..5)
        ) {
            for source in sources(&prefixes) {
                if let Source::Kv(prefix) = source {
                    let _ = encode_path(&prefix);
                }
            }
        }
    }
}
