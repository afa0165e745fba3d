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

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
    /// Values as bytes: Consul stores a PUT's body as it is ("the payload is arbitrary",
    /// https://developer.hashicorp.com/consul/api-docs/kv#create-update-key).
    kv: BTreeMap<String, Vec<u8>>,
    instances: BTreeMap<String, Instance>,
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
    pub fn put(&self, key: &str, value: impl AsRef<[u8]>) {
        self.shared.change(|data| {
            data.kv.insert(key.to_string(), value.as_ref().to_vec());
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
    body: axum::body::Bytes,
) -> Response {
    shared.change(|data| {
        data.kv.insert(key, body.to_vec());
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
