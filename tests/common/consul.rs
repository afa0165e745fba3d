//! A stand-in for a Consul agent, because Consul cannot be installed on this machine (it is not
//! packaged for Debian). It follows Consul's documented HTTP API for what reconfd uses; each
//! behaviour names the page of the documentation it follows:
//!
//! - API structure (<https://developer.hashicorp.com/consul/api-docs/api-structure>): the token
//!   in `X-Consul-Token`, the anonymous token's rights when none is given; JSON answers with
//!   `Content-Type: application/json`; `X-Consul-KnownLeader`, `X-Consul-LastContact` and
//!   `X-Consul-Index` on every read; `X-Consul-Results-Filtered-By-ACLs: true` when the ACLs
//!   left entries out of an answer; errors as plain text.
//! - KV store (<https://developer.hashicorp.com/consul/api-docs/kv>): `GET /v1/kv/<key>` and
//!   `?recurse` (the root prefix is `/v1/kv/?recurse`), 404 when nothing matches, values in
//!   base64 and `null` for a key holding the empty string, folders as keys ending in `/`;
//!   `key:read` needed, a recursive read filtered by the ACLs, a single key refused with 403.
//! - Blocking queries (<https://developer.hashicorp.com/consul/api-docs/features/blocking>):
//!   `index` and `wait`, an index per endpoint (the highest index of what the query covers,
//!   deletes included as tombstones), which goes backwards when the agent comes back from a
//!   snapshot older than what a client saw.
//! - Catalog (<https://developer.hashicorp.com/consul/api-docs/catalog#list-services>):
//!   `GET /v1/catalog/services`, service names and their tags, the `consul` service every
//!   cluster lists; `service:read` needed per service, the rest filtered.
//! - Health (<https://developer.hashicorp.com/consul/api-docs/health#list-service-instances-for-service>):
//!   `GET /v1/health/service/<name>` with each instance's `Node`, `Service` and `Checks` (with
//!   `CheckID`, `Name`, `Status`, `Output`, `ServiceID`, `ServiceName`), `?passing` keeping the
//!   instances whose checks all pass; filtered by `service:read`.
//! - ACLs (<https://developer.hashicorp.com/consul/docs/security/acl>): `key_prefix` and
//!   `service_prefix` rules with `read`; default deny, so the anonymous token reads nothing;
//!   an unknown token is 403 `ACL not found`; a denied single read 403 `Permission denied`.
//! - An unknown `dc` is 500 `No path to datacenter`.
//!
//! Consul itself has no basic authentication; a reverse proxy in front of the agents may ask
//! for it, which is what confd's `-basic-auth` is for. [`Consul::require_basic_auth`] plays
//! that proxy: a request without the right `Authorization: Basic` header (RFC 7617) is
//! answered 401 before the agent sees it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

/// The node the agent's own server runs on, which the `consul` service lists.
const SERVER_NODE: &str = "consul-server-1";

/// An instance registered in the stand-in's catalog.
#[derive(Clone)]
struct Instance {
    service: String,
    node: String,
    node_address: String,
    address: String,
    port: u16,
    tags: Vec<String>,
    passing: bool,
}

/// A KV entry and the index of its last change.
struct Entry {
    /// As bytes: Consul stores a PUT's body as it is ("the payload is arbitrary",
    /// https://developer.hashicorp.com/consul/api-docs/kv#create-update-key).
    value: Vec<u8>,
    create_index: u64,
    modify_index: u64,
}

/// What a token may read: key and service name prefixes, as `key_prefix` and
/// `service_prefix` rules with `policy = "read"` give.
#[derive(Clone, Default)]
struct Rules {
    keys: Vec<String>,
    services: Vec<String>,
}

impl Rules {
    fn everything() -> Rules {
        Rules {
            keys: vec![String::new()],
            services: vec![String::new()],
        }
    }

    fn reads_key(&self, key: &str) -> bool {
        self.keys
            .iter()
            .any(|prefix| key.starts_with(prefix.as_str()))
    }

    fn reads_service(&self, name: &str) -> bool {
        self.services
            .iter()
            .any(|prefix| name.starts_with(prefix.as_str()))
    }
}

#[derive(Default)]
struct Data {
    /// The Raft index: the index of the latest change.
    index: u64,
    kv: BTreeMap<String, Entry>,
    /// Deleted keys and the index of their deletion, so that a list's index moves on when a
    /// key leaves it.
    tombstones: BTreeMap<String, u64>,
    /// The index at which the list of services last changed.
    services_index: u64,
    instances: BTreeMap<String, Instance>,
    /// The index at which each service's instances last changed, kept after the last one
    /// leaves.
    service_index: BTreeMap<String, u64>,
    /// ACL tokens and their rules; `None` when ACLs are off.
    tokens: Option<BTreeMap<String, Rules>>,
    sessions: Sessions,
    /// The `Authorization` header the proxy in front wants, if any.
    basic_auth: Option<String>,
}

impl Data {
    /// Sets `key` to `value` at Raft index `index`.
    fn put_kv(&mut self, key: &str, value: Vec<u8>, index: u64) {
        let create_index = self.kv.get(key).map_or(index, |entry| entry.create_index);
        self.tombstones.remove(key);
        self.kv.insert(
            key.to_string(),
            Entry {
                value,
                create_index,
                modify_index: index,
            },
        );
    }

    /// Deletes `key` at Raft index `index`, leaving a tombstone.
    fn delete_kv(&mut self, key: &str, index: u64) {
        if self.kv.remove(key).is_some() {
            self.tombstones.insert(key.to_string(), index);
        }
    }

    /// The index of a recursive KV read of `prefix`: its highest entry or tombstone.
    fn kv_index(&self, prefix: &str, recurse: bool) -> u64 {
        let covers = |key: &str| {
            if recurse {
                key.starts_with(prefix)
            } else {
                key == prefix
            }
        };
        let entries = self
            .kv
            .iter()
            .filter(|(key, _)| covers(key))
            .map(|(_, entry)| entry.modify_index);
        let tombstones = self
            .tombstones
            .iter()
            .filter(|(key, _)| covers(key))
            .map(|(_, index)| *index);
        // A prefix that never held anything answers with the KV table's index.
        entries.chain(tombstones).max().unwrap_or_else(|| {
            self.kv
                .values()
                .map(|entry| entry.modify_index)
                .chain(self.tombstones.values().copied())
                .max()
                .unwrap_or(1)
        })
    }
}

struct Shared {
    data: Mutex<Data>,
    changed: watch::Sender<u64>,
    /// Blocking queries waiting for a change.
    blocked: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// Applies a change at the next index and wakes the blocking queries.
    fn change(&self, apply: impl FnOnce(&mut Data, u64)) {
        let index = {
            let mut data = self.data.lock().expect("lock");
            data.index += 1;
            let index = data.index;
            apply(&mut data, index);
            index
        };
        self.changed.send_replace(index);
    }
}

/// A running stand-in; stopped when dropped.
pub struct Consul {
    port: u16,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl Consul {
    /// Starts an agent on a free loopback port. With `token`, ACLs are on: that token reads
    /// everything, and a request without a token gets the anonymous token, which reads
    /// nothing. The catalog holds the `consul` service, as every cluster's does.
    pub fn start(token: Option<&str>) -> Consul {
        let mut data = Data {
            index: 1,
            ..Data::default()
        };
        data.instances.insert(
            "consul".to_string(),
            Instance {
                service: "consul".to_string(),
                node: SERVER_NODE.to_string(),
                node_address: "127.0.0.1".to_string(),
                address: String::new(),
                port: 8300,
                tags: Vec::new(),
                passing: true,
            },
        );
        data.services_index = 1;
        data.service_index.insert("consul".to_string(), 1);
        data.tokens = token.map(|token| BTreeMap::from([(token.to_string(), Rules::everything())]));
        let shared = Arc::new(Shared {
            data: Mutex::new(data),
            changed: watch::channel(1).0,
            blocked: std::sync::atomic::AtomicUsize::new(0),
        });
        let mut consul = Consul {
            port: 0,
            shared,
            stop: None,
        };
        consul.serve();
        consul
    }

    fn serve(&mut self) {
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, bound) = std::sync::mpsc::channel();
        let shared = Arc::clone(&self.shared);
        let port = self.port;
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .expect("bind");
                ready
                    .send(listener.local_addr().expect("address").port())
                    .expect("report the port");
                let router = Router::new()
                    .route("/v1/kv/", get(kv_get_root))
                    .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
                    .route("/v1/session/create", put(session_create))
                    .route("/v1/session/renew/{id}", put(session_renew))
                    .route("/v1/session/destroy/{id}", put(session_destroy))
                    .route("/v1/catalog/services", get(catalog_services))
                    .route("/v1/health/service/{name}", get(health_service))
                    .with_state(shared);
                // Stopping drops the server and every open connection with the runtime, as a
                // killed agent would.
                tokio::select! {
                    _ = axum::serve(listener, router) => {}
                    _ = stopped => {}
                }
            });
        });
        self.port = bound.recv().expect("the stand-in started");
        self.stop = Some(stop);
    }

    /// Puts a proxy in front that wants HTTP basic authentication with `user` and `password`.
    pub fn require_basic_auth(&self, user: &str, password: &str) {
        let credentials = BASE64.encode(format!("{user}:{password}"));
        self.shared.data.lock().expect("lock").basic_auth = Some(format!("Basic {credentials}"));
    }

    /// Makes `token` the one token that reads everything (none: ACLs off), as if the tokens
    /// were changed. Queries already admitted answer as before.
    pub fn set_token(&self, token: Option<&str>) {
        let mut data = self.shared.data.lock().expect("lock");
        data.tokens = token.map(|token| BTreeMap::from([(token.to_string(), Rules::everything())]));
    }

    /// Adds a token that may read the keys starting with one of `keys` and the services whose
    /// names start with one of `services` (ACLs must be on).
    pub fn add_token(&self, token: &str, keys: &[&str], services: &[&str]) {
        let rules = Rules {
            keys: keys.iter().map(|key| key.to_string()).collect(),
            services: services.iter().map(|name| name.to_string()).collect(),
        };
        let mut data = self.shared.data.lock().expect("lock");
        data.tokens
            .as_mut()
            .expect("ACLs are on")
            .insert(token.to_string(), rules);
    }

    /// How many blocking queries are waiting for a change: a watch is following the agent.
    pub fn blocking_queries(&self) -> usize {
        self.shared.blocked.load(Ordering::SeqCst)
    }

    /// The agent's URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the agent, closing its connections; its data is kept for [`Consul::restart`].
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The listener closes with the runtime on the server's thread: wait until the port
        // refuses connections before anyone binds it again.
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            std::thread::yield_now();
        }
    }

    /// Starts the agent again on the same port, its data restored from a snapshot: the same
    /// keys and services, at lower indexes than before (the tombstones are gone), so an index
    /// a client holds can be past the agent's.
    pub fn restart(&mut self) {
        self.stop();
        {
            let mut data = self.shared.data.lock().expect("lock");
            let mut index = 1;
            for entry in data.kv.values_mut() {
                index += 1;
                entry.create_index = index;
                entry.modify_index = index;
            }
            data.tombstones.clear();
            index += 1;
            data.services_index = index;
            for service_index in data.service_index.values_mut() {
                *service_index = index;
            }
            data.index = index;
        }
        self.serve();
    }

    /// The agent's Raft index: the index of its latest change.
    pub fn index(&self) -> u64 {
        self.shared.data.lock().expect("lock").index
    }

    /// Sets a KV key.
    pub fn put(&self, key: &str, value: impl AsRef<[u8]>) {
        self.shared
            .change(|data, index| data.put_kv(key, value.as_ref().to_vec(), index));
    }

    /// Deletes a KV key.
    pub fn delete(&self, key: &str) {
        self.shared.change(|data, index| data.delete_kv(key, index));
    }

    /// Registers an instance `id` of `service` on `node`, with a passing check.
    pub fn register(&self, id: &str, service: &str, node: &str, address: &str, port: u16) {
        let instance = Instance {
            service: service.to_string(),
            node: node.to_string(),
            node_address: "192.0.2.1".to_string(),
            address: address.to_string(),
            port,
            tags: vec!["http".to_string()],
            passing: true,
        };
        self.shared.change(|data, index| {
            if !data
                .instances
                .values()
                .any(|known| known.service == service)
            {
                data.services_index = index;
            }
            data.service_index.insert(service.to_string(), index);
            data.instances.insert(id.to_string(), instance);
        });
    }

    /// Makes instance `id`'s check pass or fail.
    pub fn set_passing(&self, id: &str, passing: bool) {
        self.shared.change(|data, index| {
            if let Some(instance) = data.instances.get_mut(id) {
                instance.passing = passing;
                let service = instance.service.clone();
                data.service_index.insert(service, index);
            }
        });
    }

    /// How many sessions are live.
    pub fn sessions(&self) -> usize {
        self.shared.data.lock().expect("lock").sessions.live.len()
    }

    /// Removes instance `id` from the catalog.
    pub fn deregister(&self, id: &str) {
        self.shared.change(|data, index| {
            if let Some(instance) = data.instances.remove(id) {
                data.service_index.insert(instance.service.clone(), index);
                if !data
                    .instances
                    .values()
                    .any(|known| known.service == instance.service)
                {
                    data.services_index = index;
                }
            }
        });
    }
}

impl Drop for Consul {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[derive(Deserialize)]
struct Params {
    index: Option<u64>,
    wait: Option<String>,
    dc: Option<String>,
    recurse: Option<String>,
    passing: Option<String>,
}

/// A plain-text error, as Consul writes them.
fn error(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain")],
        text.to_string(),
    )
        .into_response()
}

/// Checks the token and the datacenter; returns the token's rules, or the error to answer
/// instead.
fn admit(
    shared: &Shared,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Rules, (StatusCode, &'static str)> {
    let data = shared.data.lock().expect("lock");
    if let Some(wanted) = &data.basic_auth
        && headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(wanted.as_str())
    {
        return Err((StatusCode::UNAUTHORIZED, "401 Unauthorized"));
    }
    let rules = match &data.tokens {
        None => Rules::everything(),
        Some(tokens) => match headers.get("X-Consul-Token").and_then(|v| v.to_str().ok()) {
            // The anonymous token, which may read nothing here.
            None => Rules::default(),
            Some(token) => match tokens.get(token) {
                Some(rules) => rules.clone(),
                None => return Err((StatusCode::FORBIDDEN, "ACL not found")),
            },
        },
    };
    if params.dc.as_deref().is_some_and(|dc| dc != "dc1") {
        return Err((StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter"));
    }
    Ok(rules)
}

/// Holds a blocking query until the index of what it reads, as `index_of` tells, passes the
/// one asked for, or the wait runs out (five minutes unless `wait` says otherwise).
async fn block(shared: &Shared, params: &Params, index_of: impl Fn(&Data) -> u64) {
    let Some(asked) = params.index else {
        return;
    };
    let wait = params
        .wait
        .as_deref()
        .and_then(|wait| humantime::parse_duration(wait).ok())
        .unwrap_or(Duration::from_secs(300));
    let mut changed = shared.changed.subscribe();
    shared.blocked.fetch_add(1, Ordering::SeqCst);
    let passed = |_: &u64| index_of(&shared.data.lock().expect("lock")) > asked;
    let _ = tokio::time::timeout(wait, changed.wait_for(passed)).await;
    shared.blocked.fetch_sub(1, Ordering::SeqCst);
}

/// A JSON answer with the headers of a read: its index, a known leader, and whether the ACLs
/// filtered it.
/// An answer of a write: the current Raft index, nothing filtered.
fn with_index(shared: &Shared, status: StatusCode, body: Value) -> Response {
    let index = shared.data.lock().expect("lock").index;
    answer(status, index, false, body)
}

fn answer(status: StatusCode, index: u64, filtered: bool, body: Value) -> Response {
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (
                header::HeaderName::from_static("x-consul-index"),
                index.to_string(),
            ),
            (
                header::HeaderName::from_static("x-consul-knownleader"),
                "true".to_string(),
            ),
            (
                header::HeaderName::from_static("x-consul-lastcontact"),
                "0".to_string(),
            ),
        ],
        if body.is_null() {
            String::new()
        } else {
            body.to_string()
        },
    )
        .into_response();
    if filtered {
        response.headers_mut().insert(
            "X-Consul-Results-Filtered-By-ACLs",
            header::HeaderValue::from_static("true"),
        );
    }
    response
}

async fn kv_get_root(
    state: State<Arc<Shared>>,
    params: Query<Params>,
    headers: HeaderMap,
) -> Response {
    kv_get(state, Path(String::new()), params, headers).await
}

async fn kv_get(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Response {
    let rules = match admit(&shared, &headers, &params) {
        Ok(rules) => rules,
        Err((status, text)) => return error(status, text),
    };
    let recurse = params.recurse.is_some();
    if !recurse && !rules.reads_key(&key) {
        return error(
            StatusCode::FORBIDDEN,
            &format!("Permission denied: token lacks permission 'key:read' on \"{key}\""),
        );
    }
    block(&shared, &params, |data| data.kv_index(&key, recurse)).await;
    let data = shared.data.lock().expect("lock");
    let mut filtered = false;
    let entries: Vec<Value> = data
        .kv
        .iter()
        .filter(|(name, _)| {
            if recurse {
                name.starts_with(&key)
            } else {
                **name == key
            }
        })
        .filter(|(name, _)| {
            let readable = rules.reads_key(name);
            filtered |= !readable;
            readable
        })
        .map(|(name, entry)| {
            json!({
                "Key": name,
                // An empty value is null, not "".
                "Value": (!entry.value.is_empty()).then(|| BASE64.encode(&entry.value)),
                "Flags": 0,
                "CreateIndex": entry.create_index, "ModifyIndex": entry.modify_index,
                "LockIndex": 0,
            })
        })
        .collect();
    let index = data.kv_index(&key, recurse);
    if entries.is_empty() {
        return answer(StatusCode::NOT_FOUND, index, filtered, Value::Null);
    }
    answer(StatusCode::OK, index, filtered, Value::Array(entries))
}

async fn kv_put(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    Query(write): Query<KvWrite>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(session) = write.acquire {
        return kv_acquire(&shared, key, &session, body);
    }
    shared.change(|data, index| data.put_kv(&key, body.to_vec(), index));
    with_index(&shared, StatusCode::OK, Value::Bool(true))
}

async fn kv_delete(State(shared): State<Arc<Shared>>, Path(key): Path<String>) -> Response {
    shared.change(|data, index| data.delete_kv(&key, index));
    with_index(&shared, StatusCode::OK, Value::Bool(true))
}

async fn catalog_services(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Response {
    let rules = match admit(&shared, &headers, &params) {
        Ok(rules) => rules,
        Err((status, text)) => return error(status, text),
    };
    block(&shared, &params, |data| data.services_index).await;
    let data = shared.data.lock().expect("lock");
    let mut services: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut filtered = false;
    for instance in data.instances.values() {
        if !rules.reads_service(&instance.service) {
            filtered = true;
            continue;
        }
        let tags = services.entry(instance.service.clone()).or_default();
        for tag in &instance.tags {
            if !tags.contains(tag) {
                tags.push(tag.clone());
            }
        }
    }
    answer(
        StatusCode::OK,
        data.services_index,
        filtered,
        json!(services),
    )
}

async fn health_service(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Response {
    let rules = match admit(&shared, &headers, &params) {
        Ok(rules) => rules,
        Err((status, text)) => return error(status, text),
    };
    let index_of = |data: &Data| data.service_index.get(&name).copied().unwrap_or(data.index);
    block(&shared, &params, index_of).await;
    let data = shared.data.lock().expect("lock");
    let readable = rules.reads_service(&name);
    let mut filtered = false;
    let entries: Vec<Value> = data
        .instances
        .iter()
        .filter(|(_, instance)| instance.service == name)
        .filter(|_| {
            filtered |= !readable;
            readable
        })
        .filter(|(_, instance)| params.passing.is_none() || instance.passing)
        .map(|(id, instance)| {
            let status = if instance.passing {
                "passing"
            } else {
                "critical"
            };
            json!({
                "Node": {"ID": "", "Node": instance.node, "Address": instance.node_address,
                         "Datacenter": "dc1"},
                "Service": {"ID": id, "Service": instance.service, "Tags": instance.tags,
                            "Address": instance.address, "Port": instance.port,
                            "Meta": {"version": "1"}},
                "Checks": [
                    {"Node": instance.node, "CheckID": "serfHealth",
                     "Name": "Serf Health Status", "Status": "passing",
                     "Output": "Agent alive and reachable", "ServiceID": "",
                     "ServiceName": ""},
                    {"Node": instance.node, "CheckID": format!("service:{id}"),
                     "Name": format!("Service '{}' check", instance.service), "Status": status,
                     "Output": format!("HTTP GET: {status}"), "ServiceID": id,
                     "ServiceName": instance.service},
                ],
            })
        })
        .collect();
    answer(
        StatusCode::OK,
        index_of(&data),
        filtered,
        Value::Array(entries),
    )
}

// --- Sessions -------------------------------------------------------------------------------
//
// Consul's Session HTTP API (https://developer.hashicorp.com/consul/api-docs/session) and the
// KV store's `acquire` (https://developer.hashicorp.com/consul/api-docs/kv#acquire), as far as
// announcing uses them: sessions with a TTL (from 10s to 86400s, else an error), renewed with
// `renew` (404 for a session Consul no longer has), ended by `destroy` or by the TTL running
// out; when a session ends, the keys it holds are deleted (`Behavior = "delete"`) or released
// (`"release"`, the default), and its `LockDelay` (15s by default) keeps them from being
// acquired again for that long (sessions overview, "lock-delay"). Consul may take up to twice
// the TTL to end a session; the stand-in ends it when the TTL runs out.

/// The sessions and the keys they hold.
#[derive(Default)]
struct Sessions {
    next_id: u64,
    live: BTreeMap<String, Session>,
    /// Each held key's session.
    holders: BTreeMap<String, String>,
    /// Keys that may not be acquired until the instant given, after their session ended.
    delayed: BTreeMap<String, tokio::time::Instant>,
}

struct Session {
    ttl: Duration,
    deadline: tokio::time::Instant,
    delete: bool,
    lock_delay: Duration,
}

#[derive(Deserialize)]
struct KvWrite {
    acquire: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct SessionRequest {
    #[serde(rename = "TTL")]
    ttl: Option<String>,
    behavior: Option<String>,
    lock_delay: Option<String>,
}

fn duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text).ok()
}

async fn session_create(State(shared): State<Arc<Shared>>, body: String) -> Response {
    let request: SessionRequest = if body.trim().is_empty() {
        SessionRequest::default()
    } else {
        match serde_json::from_str(&body) {
            Ok(request) => request,
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        }
    };
    let Some(ttl) = request.ttl.as_deref().and_then(duration) else {
        return (StatusCode::BAD_REQUEST, "the stand-in needs a TTL").into_response();
    };
    if !(Duration::from_secs(10)..=Duration::from_secs(86_400)).contains(&ttl) {
        let message = format!(
            "Invalid Session TTL '{}', must be between [10s=24h0m0s]",
            ttl.as_nanos()
        );
        return (StatusCode::INTERNAL_SERVER_ERROR, message).into_response();
    }
    let lock_delay = request
        .lock_delay
        .as_deref()
        .map_or(Some(Duration::from_secs(15)), duration)
        .unwrap_or(Duration::from_secs(15));
    let id = {
        let mut data = shared.data.lock().expect("lock");
        let sessions = &mut data.sessions;
        sessions.next_id += 1;
        let id = format!("00000000-0000-0000-0000-{:012}", sessions.next_id);
        sessions.live.insert(
            id.clone(),
            Session {
                ttl,
                deadline: tokio::time::Instant::now() + ttl,
                delete: request.behavior.as_deref() == Some("delete"),
                lock_delay,
            },
        );
        id
    };
    tokio::spawn(expire(Arc::clone(&shared), id.clone()));
    Json(json!({ "ID": id })).into_response()
}

/// Ends session `id` once its TTL runs out without a renewal.
async fn expire(shared: Arc<Shared>, id: String) {
    loop {
        let deadline = match shared.data.lock().expect("lock").sessions.live.get(&id) {
            Some(session) => session.deadline,
            None => return,
        };
        tokio::time::sleep_until(deadline).await;
        let expired = shared
            .data
            .lock()
            .expect("lock")
            .sessions
            .live
            .get(&id)
            .is_some_and(|session| session.deadline <= tokio::time::Instant::now());
        if expired {
            end_session(&shared, &id);
            return;
        }
    }
}

/// Ends session `id`: its keys are deleted or released, and held back for its lock delay.
fn end_session(shared: &Shared, id: &str) -> bool {
    let mut ended = false;
    shared.change(|data, index| {
        let Some(session) = data.sessions.live.remove(id) else {
            return;
        };
        ended = true;
        let held: Vec<String> = data
            .sessions
            .holders
            .iter()
            .filter(|(_, holder)| *holder == id)
            .map(|(key, _)| key.clone())
            .collect();
        for key in held {
            data.sessions.holders.remove(&key);
            if session.delete {
                data.delete_kv(&key, index);
            }
            if !session.lock_delay.is_zero() {
                let until = tokio::time::Instant::now() + session.lock_delay;
                data.sessions.delayed.insert(key, until);
            }
        }
    });
    ended
}

async fn session_renew(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mut data = shared.data.lock().expect("lock");
    match data.sessions.live.get_mut(&id) {
        Some(session) => {
            session.deadline = tokio::time::Instant::now() + session.ttl;
            Json(json!([{ "ID": id, "TTL": format!("{}s", session.ttl.as_secs()) }]))
                .into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            format!("Session id '{id}' not found"),
        )
            .into_response(),
    }
}

async fn session_destroy(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    end_session(&shared, &id);
    Json(Value::Bool(true)).into_response()
}

/// `PUT /v1/kv/<key>?acquire=<session>`: takes the lock and writes the value when the key is
/// free (or already the session's) and not within a lock delay; answers `false` otherwise.
fn kv_acquire(shared: &Shared, key: String, session: &str, body: axum::body::Bytes) -> Response {
    {
        let data = shared.data.lock().expect("lock");
        if !data.sessions.live.contains_key(session) {
            let message = format!("invalid session \"{session}\"");
            return (StatusCode::INTERNAL_SERVER_ERROR, message).into_response();
        }
        let held_by_other = data
            .sessions
            .holders
            .get(&key)
            .is_some_and(|holder| holder != session);
        let delayed = data
            .sessions
            .delayed
            .get(&key)
            .is_some_and(|until| *until > tokio::time::Instant::now());
        if held_by_other || delayed {
            return with_index(shared, StatusCode::OK, Value::Bool(false));
        }
    }
    shared.change(|data, index| {
        data.sessions
            .holders
            .insert(key.clone(), session.to_string());
        data.put_kv(&key, body.to_vec(), index);
    });
    with_index(shared, StatusCode::OK, Value::Bool(true))
}
