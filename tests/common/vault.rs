//! A stand-in for a Vault server, because Vault cannot be installed on this machine (it is not
//! packaged for Debian). It follows Vault's documented HTTP API for what reconfd uses; each
//! behaviour names the page of the documentation it follows:
//!
//! - KV version 2 (<https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2>):
//!   `GET <mount>/data/<path>` answers the latest version in the `{"data": {"data": ...,
//!   "metadata": ...}}` envelope, and 404 with `data` null and the version's metadata when that
//!   version is deleted or destroyed; `GET <mount>/metadata/<path>` answers the secret's
//!   metadata (versions, `current_version`), never its data; `LIST <mount>/metadata/<path>/`
//!   (`GET ...?list=true`) lists the keys, deleted and destroyed ones included, as long as
//!   their metadata is kept; `data/` has no LIST (405 `unsupported operation`); delete,
//!   undelete and destroy of a version, and delete of the metadata (all versions) are the
//!   [`Vault::delete`], [`Vault::undelete`], [`Vault::destroy`] and
//!   [`Vault::delete_metadata`] of the tests.
//! - KV version 1 (<https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v1>):
//!   `GET <mount>/<path>` and `LIST <mount>/<path>/`.
//! - Mounts (<https://developer.hashicorp.com/vault/api-docs/system/internal-ui-mounts>):
//!   `GET sys/internal/ui/mounts/<path>` answers the mount holding `path`, nested ones
//!   (`team/kv/`) included, with its `type`, its `path` and `options.version`, to a token
//!   with any capability on a path in that mount; any other token, or a path in no mount, is
//!   refused with 403, so that the endpoint does not tell which mounts exist.
//! - Policies (<https://developer.hashicorp.com/vault/docs/concepts/policies>): each request
//!   needs the capability of its operation (`read` for GET, `list` for LIST) on its path
//!   (`secret/data/app/db`, `secret/metadata/app/`): an exact path, a path ending in `*`
//!   (any path starting with what precedes it), or `+` for one segment; the most specific
//!   matching rule decides; anything else is 403 `permission denied`. The root token may do
//!   anything.
//! - Tokens (<https://developer.hashicorp.com/vault/api-docs/auth/token>): `X-Vault-Token`
//!   (403 `permission denied` when missing, unknown or expired), `auth/token/lookup-self`,
//!   `auth/token/renew-self` (up to the token's maximum lifetime); AppRole
//!   (<https://developer.hashicorp.com/vault/api-docs/auth/approle>): `auth/approle/login`,
//!   400 `invalid role or secret ID`; the method may be enabled at another path
//!   (<https://developer.hashicorp.com/vault/docs/commands/auth/enable>, `-path`), whose login
//!   is then `auth/<path>/login`, and `auth/approle/login` is 404 `no handler for route`.
//! - An unknown path in no mount is 404 `no handler for route`.

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
    /// Its policy's rules: (path pattern, capabilities); `None` for the root policy.
    rules: Option<Vec<(String, Vec<String>)>>,
}

/// A mounted secrets engine.
struct Mount {
    /// As Vault names it, with a trailing `/`: `secret/`, `team/kv/`.
    path: String,
    kind: &'static str,
    /// The KV version, for a KV mount.
    version: u8,
}

/// One version of a secret (KV 1 keeps only one).
struct Version {
    /// `None` once destroyed.
    data: Option<Value>,
    deleted: bool,
}

#[derive(Default)]
struct Secret {
    versions: BTreeMap<u64, Version>,
}

impl Secret {
    fn current(&self) -> Option<(u64, &Version)> {
        self.versions
            .iter()
            .next_back()
            .map(|(number, version)| (*number, version))
    }

    fn metadata(&self) -> Value {
        let versions: serde_json::Map<String, Value> = self
            .versions
            .iter()
            .map(|(number, version)| {
                (
                    number.to_string(),
                    version_metadata(*number, version)["version_meta"].clone(),
                )
            })
            .collect();
        json!({"current_version": self.current().map_or(0, |(number, _)| number),
               "max_versions": 0, "oldest_version": 0, "versions": versions})
    }
}

fn version_metadata(number: u64, version: &Version) -> Value {
    let meta = json!({
        "created_time": "2026-01-01T00:00:00Z",
        "deletion_time": if version.deleted { "2026-01-02T00:00:00Z" } else { "" },
        "destroyed": version.data.is_none(),
        "version": number,
    });
    json!({"version_meta": meta.clone(), "metadata": meta})
}

struct Data {
    mounts: Vec<Mount>,
    /// (mount path without its `/`, path in it) → the secret.
    secrets: BTreeMap<(String, String), Secret>,
    tokens: BTreeMap<String, Token>,
    /// The AppRole credentials and the lifetime of the tokens they give.
    app_role: Option<(String, String, Duration, Duration)>,
    /// Where the AppRole method is enabled.
    app_role_path: String,
    logins: usize,
    renewals: usize,
    issued: usize,
    /// The paths asked of `sys/internal/ui/mounts`, in order.
    preflights: Vec<String>,
}

impl Data {
    /// The mount holding `path` (no leading `/`): the longest mount path it starts with.
    fn mount_of(&self, path: &str) -> Option<&Mount> {
        let path = format!("{}/", path.trim_end_matches('/'));
        self.mounts
            .iter()
            .filter(|mount| path.starts_with(&mount.path))
            .max_by_key(|mount| mount.path.len())
    }

    /// The token of `headers`, if it is known and alive.
    fn token(&self, headers: &HeaderMap) -> Option<(&str, &Token)> {
        let name = headers.get("X-Vault-Token")?.to_str().ok()?;
        let (name, token) = self.tokens.get_key_value(name)?;
        token
            .expires
            .is_none_or(|expires| Instant::now() < expires)
            .then_some((name.as_str(), token))
    }
}

/// Whether `rules` grant `capability` on `path`: the most specific matching rule decides (an
/// exact path over a pattern, a longer pattern over a shorter one).
fn allows(rules: &[(String, Vec<String>)], path: &str, capability: &str) -> bool {
    let matching = rules
        .iter()
        .filter(|(pattern, _)| matches(pattern, path))
        .max_by_key(|(pattern, _)| (!pattern.ends_with('*'), pattern.len()));
    matching.is_some_and(|(_, capabilities)| {
        capabilities.iter().any(|granted| granted == capability)
            && !capabilities.iter().any(|granted| granted == "deny")
    })
}

/// Whether a policy path matches `path`: `*` at the end for any rest, `+` for one segment.
fn matches(pattern: &str, path: &str) -> bool {
    let (pattern, glob) = match pattern.strip_suffix('*') {
        Some(start) => (start, true),
        None => (pattern, false),
    };
    let mut rest = path;
    let mut pattern_rest = pattern;
    loop {
        match pattern_rest.find('+') {
            Some(plus) => {
                let (before, after) = (&pattern_rest[..plus], &pattern_rest[plus + 1..]);
                let Some(tail) = rest.strip_prefix(before) else {
                    return false;
                };
                let segment_end = tail.find('/').unwrap_or(tail.len());
                if segment_end == 0 {
                    return false;
                }
                rest = &tail[segment_end..];
                pattern_rest = after;
            }
            None if glob => return rest.starts_with(pattern_rest),
            None => return rest == pattern_rest,
        }
    }
}

/// Whether `rules` grant anything in the mount at `mount` (with its `/`), as Vault asks of a
/// token reading `sys/internal/ui/mounts/<path>`.
fn any_access(rules: &[(String, Vec<String>)], mount: &str) -> bool {
    rules.iter().any(|(pattern, capabilities)| {
        let start = pattern.trim_end_matches('*');
        let start = start.split('+').next().unwrap_or(start);
        (start.starts_with(mount) || (pattern.ends_with('*') && mount.starts_with(start)))
            && !capabilities.iter().any(|granted| granted == "deny")
    })
}

/// A running stand-in with four mounts: `secret/` (KV version 2), `kv/` (version 1),
/// `team/kv/` (version 2, nested) and `pki/` (not KV).
pub struct Vault {
    server: Server,
    data: Arc<Mutex<Data>>,
}

impl Vault {
    /// Starts the stand-in on a free loopback port.
    pub fn start() -> Vault {
        let mount = |path: &str, kind, version| Mount {
            path: path.to_string(),
            kind,
            version,
        };
        let data = Arc::new(Mutex::new(Data {
            mounts: vec![
                mount("secret/", "kv", 2),
                mount("kv/", "kv", 1),
                mount("team/kv/", "kv", 2),
                mount("pki/", "pki", 0),
            ],
            secrets: BTreeMap::new(),
            tokens: BTreeMap::new(),
            app_role: None,
            app_role_path: "approle".to_string(),
            logins: 0,
            renewals: 0,
            issued: 0,
            preflights: Vec::new(),
        }));
        let router = Router::new()
            .route("/v1/sys/internal/ui/mounts/{*path}", get(mount_info))
            .route("/v1/auth/token/lookup-self", get(lookup_self))
            .route("/v1/auth/token/renew-self", post(renew_self))
            .route("/v1/auth/{path}/login", post(app_role_login))
            .route("/v1/{*path}", get(read_or_list))
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

    /// Adds a root token that lives `ttl` (forever when `None`), renewable up to four times
    /// `ttl`.
    pub fn add_token(&self, token: &str, ttl: Option<Duration>) {
        self.data.lock().expect("lock").tokens.insert(
            token.to_string(),
            Token {
                expires: ttl.map(|ttl| Instant::now() + ttl),
                ttl: ttl.unwrap_or_default(),
                max_expires: ttl.map(|ttl| Instant::now() + ttl * 4),
                rules: None,
            },
        );
    }

    /// Adds a token that never expires, with a policy of `rules`: (path, capabilities) as in
    /// `path "secret/data/app/*" { capabilities = ["read"] }`.
    pub fn add_token_with_policy(&self, token: &str, rules: &[(&str, &[&str])]) {
        let rules = rules
            .iter()
            .map(|(path, capabilities)| {
                (
                    path.to_string(),
                    capabilities.iter().map(|c| c.to_string()).collect(),
                )
            })
            .collect();
        self.data.lock().expect("lock").tokens.insert(
            token.to_string(),
            Token {
                expires: None,
                ttl: Duration::ZERO,
                max_expires: None,
                rules: Some(rules),
            },
        );
    }

    /// Accepts AppRole logins with these IDs, giving root tokens of lifetime `ttl`,
    /// renewable up to `max_ttl` after the login.
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

    /// Enables the AppRole method at `path` instead of `approle`.
    pub fn move_app_role_to(&self, path: &str) {
        self.data.lock().expect("lock").app_role_path = path.to_string();
    }

    /// Writes a secret's fields at `path` of `mount` (`secret`, `kv`, `team/kv`): a new
    /// version on KV 2, the one value on KV 1.
    pub fn put(&self, mount: &str, path: &str, fields: Value) {
        let mut data = self.data.lock().expect("lock");
        let kv1 = data.mount_of(mount).is_some_and(|found| found.version == 1);
        let secret = data
            .secrets
            .entry((mount.to_string(), path.to_string()))
            .or_default();
        let number = if kv1 {
            1
        } else {
            secret.current().map_or(1, |(number, _)| number + 1)
        };
        secret.versions.insert(
            number,
            Version {
                data: Some(fields),
                deleted: false,
            },
        );
    }

    /// Deletes a secret: on KV 2, soft-deletes its latest version (`DELETE <mount>/data/..`),
    /// which [`Vault::undelete`] brings back; on KV 1, removes it.
    pub fn delete(&self, mount: &str, path: &str) {
        let mut data = self.data.lock().expect("lock");
        let key = (mount.to_string(), path.to_string());
        if data.mount_of(mount).is_some_and(|found| found.version == 1) {
            data.secrets.remove(&key);
        } else if let Some(secret) = data.secrets.get_mut(&key)
            && let Some(latest) = secret.versions.values_mut().next_back()
        {
            latest.deleted = true;
        }
    }

    /// Undeletes a KV 2 secret's latest version (`POST <mount>/undelete/..`).
    pub fn undelete(&self, mount: &str, path: &str) {
        let mut data = self.data.lock().expect("lock");
        if let Some(secret) = data.secrets.get_mut(&(mount.to_string(), path.to_string()))
            && let Some(latest) = secret.versions.values_mut().next_back()
        {
            latest.deleted = false;
        }
    }

    /// Destroys a KV 2 secret's latest version for good (`PUT <mount>/destroy/..`).
    pub fn destroy(&self, mount: &str, path: &str) {
        let mut data = self.data.lock().expect("lock");
        if let Some(secret) = data.secrets.get_mut(&(mount.to_string(), path.to_string()))
            && let Some(latest) = secret.versions.values_mut().next_back()
        {
            latest.data = None;
        }
    }

    /// Deletes a KV 2 secret's metadata and every version (`DELETE <mount>/metadata/..`).
    pub fn delete_metadata(&self, mount: &str, path: &str) {
        self.data
            .lock()
            .expect("lock")
            .secrets
            .remove(&(mount.to_string(), path.to_string()));
    }

    /// The paths asked of `sys/internal/ui/mounts`, in order.
    pub fn preflights(&self) -> Vec<String> {
        self.data.lock().expect("lock").preflights.clone()
    }

    /// How many AppRole logins and token renewals happened.
    pub fn logins_and_renewals(&self) -> (usize, usize) {
        let data = self.data.lock().expect("lock");
        (data.logins, data.renewals)
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, json!({"errors": [message]}).to_string()).into_response()
}

/// Vault's own words for a refused token or path, a go-multierror list spread over lines
/// (https://developer.hashicorp.com/vault/api-docs#error-response shows `{"errors":[...]}`;
/// Vault 1.x writes this message so).
fn denied() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "1 error occurred:\n\t* permission denied\n\n",
    )
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, json!({"errors": []}).to_string()).into_response()
}

fn ok(body: Value) -> Response {
    (StatusCode::OK, body.to_string()).into_response()
}

async fn mount_info(
    State(data): State<Arc<Mutex<Data>>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut data = data.lock().expect("lock");
    data.preflights.push(path.clone());
    let Some((_, token)) = data.token(&headers) else {
        return denied();
    };
    let Some(mount) = data.mount_of(&path) else {
        return denied();
    };
    if let Some(rules) = &token.rules
        && !any_access(rules, &mount.path)
    {
        return denied();
    }
    let options = match mount.kind {
        "kv" => json!({"version": mount.version.to_string()}),
        _ => Value::Null,
    };
    ok(
        json!({"data": {"path": mount.path, "type": mount.kind, "options": options,
                       "description": "", "local": false, "seal_wrap": false}}),
    )
}

async fn lookup_self(State(data): State<Arc<Mutex<Data>>>, headers: HeaderMap) -> Response {
    let data = data.lock().expect("lock");
    let Some((_, known)) = data.token(&headers) else {
        return denied();
    };
    let ttl = known.expires.map_or(0, |expires| {
        expires.saturating_duration_since(Instant::now()).as_secs()
    });
    ok(json!({"data": {"ttl": ttl, "renewable": known.max_expires.is_some()}}))
}

async fn renew_self(State(data): State<Arc<Mutex<Data>>>, headers: HeaderMap) -> Response {
    let mut data = data.lock().expect("lock");
    let Some((token, _)) = data.token(&headers) else {
        return denied();
    };
    let token = token.to_string();
    data.renewals += 1;
    let known = data.tokens.get_mut(&token).expect("a known token");
    let (Some(max), Some(_)) = (known.max_expires, known.expires) else {
        return error(StatusCode::BAD_REQUEST, "lease is not renewable");
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
    Path(path): Path<String>,
    axum::Json(login): axum::Json<Login>,
) -> Response {
    let mut data = data.lock().expect("lock");
    if path != data.app_role_path {
        return error(StatusCode::NOT_FOUND, "no handler for route");
    }
    let Some((role_id, secret_id, ttl, max_ttl)) = data.app_role.clone() else {
        return denied();
    };
    if login.role_id != role_id || login.secret_id != secret_id {
        return error(StatusCode::BAD_REQUEST, "invalid role or secret ID");
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
            rules: None,
        },
    );
    ok(json!({"auth": {"client_token": token, "lease_duration": ttl.as_secs(), "renewable": true}}))
}

#[derive(Deserialize)]
struct ListParam {
    list: Option<String>,
}

async fn read_or_list(
    State(data): State<Arc<Mutex<Data>>>,
    Path(path): Path<String>,
    Query(param): Query<ListParam>,
    headers: HeaderMap,
) -> Response {
    let data = data.lock().expect("lock");
    let Some((_, token)) = data.token(&headers) else {
        return denied();
    };
    let list = param.list.as_deref() == Some("true");
    let capability = if list { "list" } else { "read" };
    if let Some(rules) = &token.rules
        && !allows(rules, &path, capability)
    {
        return denied();
    }
    let Some(mount) = data.mount_of(&path) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no handler for route \"{path}\". route entry not found."),
        );
    };
    let mount_name = mount.path.trim_end_matches('/').to_string();
    let rest = path.strip_prefix(&mount.path).unwrap_or("");
    if mount.kind != "kv" {
        return error(StatusCode::METHOD_NOT_ALLOWED, "unsupported path");
    }
    let (area, rest) = match mount.version {
        2 => match rest.split_once('/') {
            Some((area @ ("data" | "metadata"), rest)) => (area, rest),
            None if rest == "data" || rest == "metadata" => (rest, ""),
            _ => return error(StatusCode::METHOD_NOT_ALLOWED, "unsupported path"),
        },
        _ => ("", rest),
    };
    if list {
        // KV 2 lists keys under `metadata/` only.
        if area == "data" {
            return error(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation");
        }
        let directory = if rest.is_empty() || rest.ends_with('/') {
            rest.to_string()
        } else {
            format!("{rest}/")
        };
        let mut keys: Vec<String> = data
            .secrets
            .keys()
            .filter(|(secret_mount, _)| *secret_mount == mount_name)
            .filter_map(|(_, secret)| {
                let below = secret.strip_prefix(&directory)?;
                Some(match below.split_once('/') {
                    Some((child, _)) => format!("{child}/"),
                    None => below.to_string(),
                })
            })
            .collect();
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            return not_found();
        }
        return ok(json!({"data": {"keys": keys}}));
    }
    let Some(secret) = data.secrets.get(&(mount_name, rest.to_string())) else {
        return not_found();
    };
    match (mount.version, area) {
        (2, "metadata") => ok(json!({"data": secret.metadata()})),
        (2, _) => {
            let Some((number, version)) = secret.current() else {
                return not_found();
            };
            let metadata = version_metadata(number, version)["metadata"].clone();
            match (&version.data, version.deleted) {
                (Some(fields), false) => {
                    ok(json!({"data": {"data": fields, "metadata": metadata}}))
                }
                // A deleted or destroyed version: 404, its metadata still told.
                _ => (
                    StatusCode::NOT_FOUND,
                    json!({"data": {"data": null, "metadata": metadata}}).to_string(),
                )
                    .into_response(),
            }
        }
        _ => match secret.current() {
            Some((
                _,
                Version {
                    data: Some(fields), ..
                },
            )) => ok(json!({"data": fields})),
            _ => not_found(),
        },
    }
}
