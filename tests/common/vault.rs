//! A stand-in for a Vault server, because Vault cannot be installed on this machine (it is not
//! packaged for Debian). It follows Vault's documented HTTP API for what reconfd uses: the KV
//! secrets engine version 2 (`GET <mount>/data/<path>` with the `{"data": {"data": ...,
//! "metadata": ...}}` envelope, `GET <mount>/metadata/<path>?list=true`) and version 1
//! (`GET <mount>/<path>`, `?list=true`), `sys/internal/ui/mounts/<mount>` for the engine's
//! version, tokens in `X-Vault-Token` (403 `permission denied` when missing, unknown or
//! expired), `auth/token/lookup-self`, `auth/token/renew-self` (up to the token's maximum
//! lifetime) and `auth/approle/login`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::Server;

/// A token the stand-in knows.
struct Token {
    expires: Option<Instant>,
    /// The lifetime given at login and at each renewal.
    ttl: Duration,
    /// Renewals stop extending past this.
    max_expires: Option<Instant>,
}

#[derive(Default)]
struct Data {
    /// (mount, path) → fields.
    secrets: BTreeMap<(String, String), Value>,
    tokens: BTreeMap<String, Token>,
    /// The AppRole credentials and the lifetime of the tokens they give.
    app_role: Option<(String, String, Duration, Duration)>,
    logins: usize,
    renewals: usize,
    issued: usize,
}

/// A running stand-in with two mounts: `secret` (KV version 2) and `kv` (version 1).
pub struct Vault {
    server: Server,
    data: Arc<Mutex<Data>>,
}

impl Vault {
    /// Starts the stand-in on a free loopback port.
    pub fn start() -> Vault {
        let data: Arc<Mutex<Data>> = Arc::default();
        let router = Router::new()
            .route("/v1/sys/internal/ui/mounts/{mount}", get(mount_info))
            .route("/v1/auth/token/lookup-self", get(lookup_self))
            .route("/v1/auth/token/renew-self", post(renew_self))
            .route("/v1/auth/approle/login", post(app_role_login))
            .route("/v1/{mount}/{*path}", get(read_or_list))
            .route("/v1/{mount}/", get(read_or_list_root))
            .with_state(Arc::clone(&data));
        Vault {
            server: Server::start(router),
            data,
        }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.address)
    }

    /// Adds a token that lives `ttl` (forever when `None`), renewable up to `max_ttl`.
    pub fn add_token(&self, token: &str, ttl: Option<Duration>) {
        self.data.lock().expect("lock").tokens.insert(
            token.to_string(),
            Token {
                expires: ttl.map(|ttl| Instant::now() + ttl),
                ttl: ttl.unwrap_or_default(),
                max_expires: ttl.map(|ttl| Instant::now() + ttl * 4),
            },
        );
    }

    /// Accepts AppRole logins with these IDs, giving tokens of lifetime `ttl`, renewable up
    /// to `max_ttl` after the login.
    pub fn enable_app_role(
        &self,
        role_id: &str,
        secret_id: &str,
        ttl: Duration,
        max_ttl: Duration,
    ) {
        self.data.lock().expect("lock").app_role =
            Some((role_id.to_string(), secret_id.to_string(), ttl, max_ttl));
    }

    /// Writes a secret's fields at `path` of `mount`.
    pub fn put(&self, mount: &str, path: &str, fields: Value) {
        self.data
            .lock()
            .expect("lock")
            .secrets
            .insert((mount.to_string(), path.to_string()), fields);
    }

    /// How many AppRole logins and token renewals happened.
    pub fn logins_and_renewals(&self) -> (usize, usize) {
        let data = self.data.lock().expect("lock");
        (data.logins, data.renewals)
    }
}

fn denied() -> Response {
    (
        StatusCode::FORBIDDEN,
        json!({"errors": ["permission denied"]}).to_string(),
    )
        .into_response()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, json!({"errors": []}).to_string()).into_response()
}

fn ok(body: Value) -> Response {
    (StatusCode::OK, body.to_string()).into_response()
}

/// The caller's token, if it is known and alive.
fn authorised(data: &Data, headers: &HeaderMap) -> Option<String> {
    let token = headers.get("X-Vault-Token")?.to_str().ok()?;
    let known = data.tokens.get(token)?;
    known
        .expires
        .is_none_or(|expires| Instant::now() < expires)
        .then(|| token.to_string())
}

fn version(mount: &str) -> u8 {
    if mount == "secret" { 2 } else { 1 }
}

async fn mount_info(
    State(data): State<Arc<Mutex<Data>>>,
    Path(mount): Path<String>,
    headers: HeaderMap,
) -> Response {
    let data = data.lock().expect("lock");
    if authorised(&data, &headers).is_none() {
        return denied();
    }
    ok(json!({"data": {"path": format!("{mount}/"), "type": "kv",
                       "options": {"version": version(&mount).to_string()}}}))
}

async fn lookup_self(State(data): State<Arc<Mutex<Data>>>, headers: HeaderMap) -> Response {
    let data = data.lock().expect("lock");
    let Some(token) = authorised(&data, &headers) else {
        return denied();
    };
    let known = &data.tokens[&token];
    let ttl = known.expires.map_or(0, |expires| {
        expires.saturating_duration_since(Instant::now()).as_secs()
    });
    ok(json!({"data": {"ttl": ttl, "renewable": known.max_expires.is_some()}}))
}

async fn renew_self(State(data): State<Arc<Mutex<Data>>>, headers: HeaderMap) -> Response {
    let mut data = data.lock().expect("lock");
    let Some(token) = authorised(&data, &headers) else {
        return denied();
    };
    data.renewals += 1;
    let known = data.tokens.get_mut(&token).expect("authorised");
    let (Some(max), Some(_)) = (known.max_expires, known.expires) else {
        return (
            StatusCode::BAD_REQUEST,
            json!({"errors": ["lease is not renewable"]}).to_string(),
        )
            .into_response();
    };
    let expires = (Instant::now() + known.ttl).min(max);
    known.expires = Some(expires);
    let left = expires.saturating_duration_since(Instant::now()).as_secs();
    ok(json!({"auth": {"client_token": token, "lease_duration": left, "renewable": true}}))
}

#[derive(Deserialize)]
struct Login {
    role_id: String,
    secret_id: String,
}

async fn app_role_login(
    State(data): State<Arc<Mutex<Data>>>,
    axum::Json(login): axum::Json<Login>,
) -> Response {
    let mut data = data.lock().expect("lock");
    let Some((role_id, secret_id, ttl, max_ttl)) = data.app_role.clone() else {
        return denied();
    };
    if login.role_id != role_id || login.secret_id != secret_id {
        return (
            StatusCode::BAD_REQUEST,
            json!({"errors": ["invalid role or secret ID"]}).to_string(),
        )
            .into_response();
    }
    data.logins += 1;
    data.issued += 1;
    let token = format!("s.approle{}", data.issued);
    let now = Instant::now();
    data.tokens.insert(
        token.clone(),
        Token {
            expires: Some(now + ttl),
            ttl,
            max_expires: Some(now + max_ttl),
        },
    );
    ok(json!({"auth": {"client_token": token, "lease_duration": ttl.as_secs(), "renewable": true}}))
}

async fn read_or_list_root(
    state: State<Arc<Mutex<Data>>>,
    Path(mount): Path<String>,
    param: Query<ListParam>,
    headers: HeaderMap,
) -> Response {
    read_or_list(state, Path((mount, String::new())), param, headers).await
}

#[derive(Deserialize)]
struct ListParam {
    list: Option<String>,
}

async fn read_or_list(
    State(data): State<Arc<Mutex<Data>>>,
    Path((mount, path)): Path<(String, String)>,
    Query(param): Query<ListParam>,
    headers: HeaderMap,
) -> Response {
    let data = data.lock().expect("lock");
    if authorised(&data, &headers).is_none() {
        return denied();
    }
    let version = version(&mount);
    let path = match version {
        2 => match path.split_once('/') {
            Some(("data" | "metadata", rest)) => rest.to_string(),
            _ => return not_found(),
        },
        _ => path,
    };
    if param.list.as_deref() == Some("true") {
        let directory = if path.is_empty() || path.ends_with('/') {
            path.clone()
        } else {
            format!("{path}/")
        };
        let mut keys: Vec<String> = data
            .secrets
            .keys()
            .filter(|(secret_mount, _)| *secret_mount == mount)
            .filter_map(|(_, secret)| {
                let rest = secret.strip_prefix(&directory)?;
                Some(match rest.split_once('/') {
                    Some((child, _)) => format!("{child}/"),
                    None => rest.to_string(),
                })
            })
            .collect();
        keys.dedup();
        if keys.is_empty() {
            return not_found();
        }
        return ok(json!({"data": {"keys": keys}}));
    }
    match data.secrets.get(&(mount, path)) {
        Some(fields) if version == 2 => ok(json!({"data": {"data": fields,
            "metadata": {"version": 1, "destroyed": false, "deletion_time": ""}}})),
        Some(fields) => ok(json!({"data": fields})),
        None => not_found(),
    }
}
