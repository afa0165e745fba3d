//! A stand-in for a Consul agent, because Consul cannot be installed on this machine (it is not
//! packaged for Debian). It follows Consul's documented HTTP API for what reconfd uses: the KV
//! store (`GET /v1/kv/<key>?recurse` answering 404 for an empty prefix, values in base64, `PUT`,
//! `DELETE`), blocking queries (`index` and `wait` parameters, the `X-Consul-Index` header),
//! `GET /v1/catalog/services`, `GET /v1/health/service/<name>` with each instance's node,
//! service and checks, ACL tokens (`X-Consul-Token`, 403 "ACL not found") and the `dc`
//! parameter. Its index is one counter for all data, which the API allows: a blocking query
//! may return without a change to what it asked for.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

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

#[derive(Default)]
struct Data {
    index: u64,
    kv: BTreeMap<String, String>,
    instances: BTreeMap<String, Instance>,
    sessions: Sessions,
}

struct Shared {
    data: Mutex<Data>,
    changed: watch::Sender<u64>,
    /// The token every request must carry, if any.
    token: Mutex<Option<String>>,
    /// Blocking queries waiting for a change.
    blocked: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// Applies a change and wakes the blocking queries.
    fn change(&self, apply: impl FnOnce(&mut Data)) {
        let index = {
            let mut data = self.data.lock().expect("lock");
            apply(&mut data);
            data.index += 1;
            data.index
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
    /// Starts an agent on a free loopback port; with `token`, every request must carry it.
    pub fn start(token: Option<&str>) -> Consul {
        let shared = Arc::new(Shared {
            data: Mutex::new(Data {
                index: 1,
                ..Data::default()
            }),
            changed: watch::channel(1).0,
            token: Mutex::new(token.map(str::to_string)),
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

    /// Makes every request from now on carry `token` (none: no token needed), as if the ACL
    /// tokens were changed. Queries already admitted answer as before.
    pub fn set_token(&self, token: Option<&str>) {
        *self.shared.token.lock().expect("lock") = token.map(str::to_string);
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
        // Let the port be released before anyone connects again.
        std::thread::sleep(Duration::from_millis(100));
    }

    /// Starts the agent again on the same port, with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.serve();
    }

    /// Sets a KV key.
    pub fn put(&self, key: &str, value: &str) {
        self.shared.change(|data| {
            data.kv.insert(key.to_string(), value.to_string());
        });
    }

    /// Deletes a KV key.
    pub fn delete(&self, key: &str) {
        self.shared.change(|data| {
            data.kv.remove(key);
        });
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
        self.shared.change(|data| {
            data.instances.insert(id.to_string(), instance);
        });
    }

    /// Makes instance `id`'s check pass or fail.
    pub fn set_passing(&self, id: &str, passing: bool) {
        self.shared.change(|data| {
            if let Some(instance) = data.instances.get_mut(id) {
                instance.passing = passing;
            }
        });
    }

    /// How many sessions are live.
    pub fn sessions(&self) -> usize {
        self.shared.data.lock().expect("lock").sessions.live.len()
    }

    /// Removes instance `id` from the catalog.
    pub fn deregister(&self, id: &str) {
        self.shared.change(|data| {
            data.instances.remove(id);
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
}

/// Checks the token and datacenter, then holds a blocking query until the index passes the
/// one asked for or the wait runs out. Returns the response to give instead, if any.
async fn admit(shared: &Shared, headers: &HeaderMap, params: &Params) -> Option<Response> {
    let token = shared.token.lock().expect("lock").clone();
    if let Some(token) = token
        && headers.get("X-Consul-Token").and_then(|v| v.to_str().ok()) != Some(token.as_str())
    {
        return Some((StatusCode::FORBIDDEN, "ACL not found").into_response());
    }
    if params.dc.as_deref().is_some_and(|dc| dc != "dc1") {
        return Some((StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter").into_response());
    }
    if let Some(index) = params.index {
        let wait = params
            .wait
            .as_deref()
            .and_then(|wait| humantime::parse_duration(wait).ok())
            .unwrap_or(Duration::from_secs(300));
        let mut changed = shared.changed.subscribe();
        shared.blocked.fetch_add(1, Ordering::SeqCst);
        let _ = tokio::time::timeout(wait, changed.wait_for(|current| *current > index)).await;
        shared.blocked.fetch_sub(1, Ordering::SeqCst);
    }
    None
}

fn with_index(shared: &Shared, status: StatusCode, body: Value) -> Response {
    let index = shared.data.lock().expect("lock").index;
    (
        status,
        [("X-Consul-Index", index.to_string())],
        body.to_string(),
    )
        .into_response()
}

async fn kv_get(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admit(&shared, &headers, &params).await {
        return refused;
    }
    let entries: Vec<Value> = {
        let data = shared.data.lock().expect("lock");
        data.kv
            .iter()
            .filter(|(name, _)| {
                if params.recurse.is_some() {
                    name.starts_with(&key)
                } else {
                    **name == key
                }
            })
            .map(|(name, value)| {
                json!({
                    "Key": name, "Value": BASE64.encode(value), "Flags": 0,
                    "CreateIndex": 1, "ModifyIndex": data.index, "LockIndex": 0,
                })
            })
            .collect()
    };
    if entries.is_empty() {
        return with_index(&shared, StatusCode::NOT_FOUND, Value::Null);
    }
    with_index(&shared, StatusCode::OK, Value::Array(entries))
}

async fn kv_put(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    Query(write): Query<KvWrite>,
    body: String,
) -> Response {
    if let Some(session) = write.acquire {
        return kv_acquire(&shared, key, &session, body);
    }
    shared.change(|data| {
        data.kv.insert(key, body);
    });
    with_index(&shared, StatusCode::OK, Value::Bool(true))
}

async fn kv_delete(State(shared): State<Arc<Shared>>, Path(key): Path<String>) -> Response {
    shared.change(|data| {
        data.kv.remove(&key);
    });
    with_index(&shared, StatusCode::OK, Value::Bool(true))
}

async fn catalog_services(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admit(&shared, &headers, &params).await {
        return refused;
    }
    let services: BTreeMap<String, Vec<String>> = {
        let data = shared.data.lock().expect("lock");
        let mut services: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for instance in data.instances.values() {
            let tags = services.entry(instance.service.clone()).or_default();
            for tag in &instance.tags {
                if !tags.contains(tag) {
                    tags.push(tag.clone());
                }
            }
        }
        services
    };
    with_index(&shared, StatusCode::OK, json!(services))
}

async fn health_service(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admit(&shared, &headers, &params).await {
        return refused;
    }
    let entries: Vec<Value> = {
        let data = shared.data.lock().expect("lock");
        data.instances
            .iter()
            .filter(|(_, instance)| instance.service == name)
            .map(|(id, instance)| {
                json!({
                    "Node": {"ID": "", "Node": instance.node, "Address": instance.node_address,
                             "Datacenter": "dc1"},
                    "Service": {"ID": id, "Service": instance.service, "Tags": instance.tags,
                                "Address": instance.address, "Port": instance.port,
                                "Meta": {"version": "1"}},
                    "Checks": [
                        {"Node": instance.node, "CheckID": "serfHealth", "Status": "passing"},
                        {"Node": instance.node, "CheckID": format!("service:{id}"),
                         "Status": if instance.passing { "passing" } else { "critical" }},
                    ],
                })
            })
            .collect()
    };
    with_index(&shared, StatusCode::OK, Value::Array(entries))
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
    shared.change(|data| {
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
                data.kv.remove(&key);
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
fn kv_acquire(shared: &Shared, key: String, session: &str, body: String) -> Response {
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
    shared.change(|data| {
        data.sessions
            .holders
            .insert(key.clone(), session.to_string());
        data.kv.insert(key, body);
    });
    with_index(shared, StatusCode::OK, Value::Bool(true))
}
