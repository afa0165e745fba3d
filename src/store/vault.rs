//! The Vault store: secrets of the KV secrets engine (version 1 or 2), read as keys.
//!
//! A resource's keys are Vault paths with a leading `/`, mount first: `/secret/app` reads the
//! secrets at and below `app` in the mount `secret`. As in confd, a secret whose only field is
//! `value` is one key (`/secret/app/db` = the value); any other secret is its fields
//! (`/secret/app/db/password`, nested objects further down) and, for `gets`-style use, the
//! whole secret as JSON at its own path. A key covers the secret at its path and those below it,
//! which is all a least-privilege policy (`read` on `secret/data/app/*`, `list` on
//! `secret/metadata/app/*`) lets a token see. The mount (nested ones too, such as `team/kv/`)
//! and its engine's version are asked of Vault's `sys/internal/ui/mounts/<path>`, as Vault's CLI
//! does, which any token with a capability in the mount may ask; `--kv-version` sets the
//! version instead.
//!
//! Vault has no change feed that reconfd can follow, so the daemon polls it at `--interval`.
//! The token is renewed when half its time is up; an AppRole login is made again when the
//! token cannot be renewed. Secret values never appear in logs or errors.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{self, one_line};
use super::nodes::{Node, Nodes};
use super::tls::TlsOptions;
use super::{KeyMap, Snapshot, Store, StoreError, StoreErrorKind, WatchStream, under_any};

/// Limit for one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Secrets read at the same time.
const READS_AT_ONCE: usize = 16;

/// A renewal shorter than this means the token is at the end of its maximum lifetime.
const MINIMUM_RENEWAL: Duration = Duration::from_secs(1);

/// How to reach Vault and log in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VaultOptions {
    /// Server URLs such as `http://127.0.0.1:8200`, tried in order.
    pub nodes: Vec<String>,
    /// How to log in.
    pub auth: VaultAuth,
    /// The KV secrets engine version; detected from the mount when `None`.
    pub kv_version: Option<u8>,
    /// TLS settings.
    pub tls: TlsOptions,
}

/// How reconfd logs in to Vault.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum VaultAuth {
    /// A token given in the settings.
    Token(String),
    /// AppRole: a role ID and a secret ID exchanged for a token.
    AppRole {
        /// The role ID.
        role_id: String,
        /// The secret ID.
        secret_id: String,
        /// Where the AppRole method is mounted: `approle` unless enabled at another path.
        mount: String,
    },
}

/// Reads secrets from Vault's KV secrets engine.
pub struct VaultStore {
    http: reqwest::Client,
    nodes: Nodes<Node>,
    auth: VaultAuth,
    kv_version: Option<u8>,
    /// The token in use and what is known of its lifetime.
    session: tokio::sync::Mutex<Option<Session>>,
    /// The mounts found (with their trailing `/`) and their KV versions, so each mount is
    /// asked once.
    mounts: Mutex<BTreeMap<String, u8>>,
}

/// A token and its lifetime.
struct Session {
    token: String,
    /// When the token expires; `None` for a token that never does.
    expires: Option<Instant>,
    /// The lifetime it was given, to renew it when half is used.
    ttl: Duration,
    renewable: bool,
}

impl VaultStore {
    /// A store for `options`; no request is made yet.
    pub fn new(options: &VaultOptions) -> Result<VaultStore, StoreError> {
        let nodes = http::nodes("vault", &options.nodes)?;
        Ok(VaultStore {
            http: http::client("vault", &options.tls, &nodes)?,
            nodes,
            auth: options.auth.clone(),
            kv_version: options.kv_version,
            session: tokio::sync::Mutex::new(None),
            mounts: Mutex::default(),
        })
    }
}

#[async_trait]
impl Store for VaultStore {
    fn name(&self) -> &'static str {
        "vault"
    }

    async fn fetch(&self, prefixes: &[String]) -> Result<Snapshot, StoreError> {
        let token = self.token().await?;
        match self.read_all(&token, prefixes).await {
            // A token revoked or expired early: an AppRole login gets a new one.
            Err(e)
                if e.kind() == StoreErrorKind::Auth
                    && matches!(self.auth, VaultAuth::AppRole { .. }) =>
            {
                tracing::info!("vault: the token was refused; logging in again");
                *self.session.lock().await = None;
                let token = self.token().await?;
                self.read_all(&token, prefixes).await
            }
            other => other,
        }
    }

    /// Vault cannot be watched: the daemon polls it.
    async fn watch(
        &self,
        _prefixes: &[String],
        _snapshot: &Snapshot,
    ) -> Result<Option<WatchStream>, StoreError> {
        Ok(None)
    }
}

impl VaultStore {
    /// Every secret under `prefixes`, as keys. Each key is read as the secret at its path and
    /// the secrets below it, and nothing else: listing the directory holding it (to find
    /// `app2` beside `app`) needs `list` on a path a least-privilege policy does not grant.
    async fn read_all(&self, token: &str, prefixes: &[String]) -> Result<Snapshot, StoreError> {
        let mut entries = KeyMap::new();
        // Listing finds every secret first; reading them, one request each, goes on several
        // at a time.
        let mut secrets: Vec<(String, Place, String)> = Vec::new();
        for prefix in prefixes {
            let place = self.place(token, prefix).await?;
            let own_path = place.path.trim_end_matches('/');
            let directory = if own_path.is_empty() {
                String::new()
            } else {
                format!("{own_path}/")
            };
            let listed = self.list(token, &place, &directory).await;
            let own = if own_path.is_empty() || place.path.ends_with('/') {
                Ok(Read::Missing)
            } else {
                self.read(token, &place, own_path).await
            };
            let (names, own) = settle(prefix, listed, own)?;
            if let Read::Found(data) = own {
                flatten_secret(&place.key(own_path), &data, &mut entries);
            }
            let mut pending = vec![(directory, names)];
            while let Some((directory, names)) = pending.pop() {
                for name in names {
                    let child = format!("{directory}{name}");
                    if name.ends_with('/') {
                        let below = self.list(token, &place, &child).await?;
                        pending.push((child, below.unwrap_or_default()));
                    } else {
                        secrets.push((place.key(&child), place.clone(), child));
                    }
                }
            }
        }
        let read: Vec<(String, Read)> = futures_util::stream::iter(secrets)
            .map(|(key, place, secret)| async move {
                self.read(token, &place, &secret)
                    .await
                    .map(|read| (key, read))
            })
            .buffer_unordered(READS_AT_ONCE)
            .try_collect()
            .await?;
        for (key, read) in read {
            if let Read::Found(data) = read {
                flatten_secret(&key, &data, &mut entries);
            }
        }
        entries.retain(|key, _| under_any(key, prefixes));
        Ok(Snapshot {
            entries,
            ..Snapshot::default()
        })
    }

    /// A token with time left: the current one, renewed once half its time is up, or a new
    /// one from an AppRole login when it cannot be renewed.
    async fn token(&self) -> Result<String, StoreError> {
        let mut session = self.session.lock().await;
        let needs_care = match &*session {
            None => true,
            Some(current) => current.expires.is_some_and(|expires| {
                expires.saturating_duration_since(Instant::now()) < current.ttl / 2
            }),
        };
        if !needs_care && let Some(current) = &*session {
            return Ok(current.token.clone());
        }
        if let Some(current) = session.as_ref().filter(|current| current.renewable) {
            match self.renew(&current.token).await {
                Ok(renewed) => {
                    let token = renewed.token.clone();
                    *session = Some(renewed);
                    return Ok(token);
                }
                Err(e) => {
                    tracing::info!("vault: the token could not be renewed ({e}); logging in again")
                }
            }
        }
        let fresh = self.log_in().await?;
        let token = fresh.token.clone();
        *session = Some(fresh);
        Ok(token)
    }

    /// A session for the configured login.
    async fn log_in(&self) -> Result<Session, StoreError> {
        match &self.auth {
            VaultAuth::Token(token) => {
                let answer = self
                    .call("GET", "/v1/auth/token/lookup-self", Some(token), None)
                    .await?;
                let data = &answer["data"];
                // A TTL of 0 is a token that never expires (a root token).
                let ttl = Duration::from_secs(data["ttl"].as_u64().unwrap_or(0));
                Ok(Session {
                    token: token.clone(),
                    expires: expiry(ttl),
                    ttl,
                    renewable: data["renewable"].as_bool().unwrap_or(false),
                })
            }
            VaultAuth::AppRole {
                role_id,
                secret_id,
                mount,
            } => {
                let answer = self
                    .call(
                        "POST",
                        &format!("/v1/auth/{mount}/login"),
                        None,
                        Some(json!({"role_id": role_id, "secret_id": secret_id})),
                    )
                    .await?;
                session_from_auth(&answer)
            }
        }
    }

    async fn renew(&self, token: &str) -> Result<Session, StoreError> {
        let answer = self
            .call(
                "POST",
                "/v1/auth/token/renew-self",
                Some(token),
                Some(json!({})),
            )
            .await?;
        let renewed = session_from_auth(&answer)?;
        // Near its maximum lifetime a token is renewed for a moment or not at all: a new
        // login is due.
        if renewed.ttl < MINIMUM_RENEWAL {
            return Err(StoreError::auth(
                "vault: the token reached its maximum lifetime",
            ));
        }
        Ok(renewed)
    }

    /// Where the secrets of `prefix` live: its mount (nested ones too, such as `team/kv/`),
    /// the mount's KV version, and the path below it. The mount is asked of Vault's
    /// `sys/internal/ui/mounts/<path>`, as Vault's own CLI does: any token with a capability on
    /// some path of the mount may ask, so a least-privilege policy needs nothing more. Each
    /// mount is asked once.
    async fn place(&self, token: &str, prefix: &str) -> Result<Place, StoreError> {
        let path = prefix.trim_start_matches('/');
        if path.is_empty() {
            return Err(StoreError::invalid(format!(
                "vault: key `{prefix}` names no secrets engine mount (such as /secret/app)"
            )));
        }
        let known = self
            .mounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(mount, _)| format!("{}/", path.trim_end_matches('/')).starts_with(*mount))
            .max_by_key(|(mount, _)| mount.len())
            .map(|(mount, version)| (mount.clone(), *version));
        let (mount, version) = match known {
            Some(found) => found,
            None => {
                let found = self.ask_mount(token, prefix, path).await?;
                self.mounts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(found.0.clone(), found.1);
                found
            }
        };
        Ok(Place {
            path: path.strip_prefix(&mount).unwrap_or("").to_string(),
            mount: mount.trim_end_matches('/').to_string(),
            version,
        })
    }

    /// The mount holding `path` (with its trailing `/`) and its KV version, as Vault tells.
    async fn ask_mount(
        &self,
        token: &str,
        prefix: &str,
        path: &str,
    ) -> Result<(String, u8), StoreError> {
        let url = format!("/v1/sys/internal/ui/mounts/{path}");
        let answer = match self.request("GET", &url, Some(token), None).await? {
            (reqwest::StatusCode::NOT_FOUND, _) => {
                // A Vault without the endpoint (before 1.0): the mount is the first segment,
                // and only --kv-version can tell its version.
                let Some(version) = self.kv_version else {
                    return Err(StoreError::rejected(format!(
                        "vault {url}: not found, so the mount of key `{prefix}` and its KV \
                         version are unknown; set kv_version (--kv-version)"
                    )));
                };
                let first = path.split('/').next().unwrap_or(path);
                return Ok((format!("{first}/"), version));
            }
            (_, answer) => answer,
        };
        let data = &answer["data"];
        let mount = data["path"].as_str().unwrap_or_default();
        if mount.is_empty() || !format!("{}/", path.trim_end_matches('/')).starts_with(mount) {
            return Err(StoreError::rejected(format!(
                "vault {url}: the answer names no mount holding key `{prefix}`"
            )));
        }
        // `generic` is the KV engine's name before Vault 0.8.
        let kind = data["type"].as_str().unwrap_or_default();
        if kind != "kv" && kind != "generic" {
            return Err(StoreError::invalid(format!(
                "vault: key `{prefix}` is in mount `{mount}`, a `{kind}` secrets engine, not KV"
            )));
        }
        let version = self
            .kv_version
            .unwrap_or(match data["options"]["version"].as_str() {
                Some("2") => 2,
                _ => 1,
            });
        Ok((mount.to_string(), version))
    }

    /// The entries of a directory (empty or ending in `/`) of `place`'s mount; `None` when
    /// it does not exist.
    async fn list(
        &self,
        token: &str,
        place: &Place,
        directory: &str,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let mount = &place.mount;
        let path = match place.version {
            2 => format!("/v1/{mount}/metadata/{directory}?list=true"),
            _ => format!("/v1/{mount}/{directory}?list=true"),
        };
        Ok(self
            .call_optional("GET", &path, token)
            .await?
            .map(|(_, answer)| {
                answer["data"]["keys"]
                    .as_array()
                    .map(|keys| {
                        keys.iter()
                            .filter_map(|key| key.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            }))
    }

    /// A secret of `place`'s mount. On KV 2, a secret whose latest version was deleted or
    /// destroyed is answered 404 with that version's metadata: it is gone from the keys.
    async fn read(&self, token: &str, place: &Place, secret: &str) -> Result<Read, StoreError> {
        let mount = &place.mount;
        let path = match place.version {
            2 => format!("/v1/{mount}/data/{secret}"),
            _ => format!("/v1/{mount}/{secret}"),
        };
        let answer = match self.call_optional("GET", &path, token).await? {
            Some((_, answer)) => answer,
            None => return Ok(Read::Missing),
        };
        let data = match place.version {
            2 => &answer["data"]["data"],
            _ => &answer["data"],
        };
        if !data.is_null() {
            return Ok(Read::Found(data.clone()));
        }
        // Found with no data: a KV 2 version deleted or destroyed.
        Ok(Read::Gone)
    }

    /// Like [`VaultStore::call`], with Vault's 404 for a missing path as `None`, except a
    /// KV 2 version deleted or destroyed: its 404 still tells its metadata, and is answered
    /// with the status.
    async fn call_optional(
        &self,
        method: &str,
        path: &str,
        token: &str,
    ) -> Result<Option<(reqwest::StatusCode, Value)>, StoreError> {
        match self.request(method, path, Some(token), None).await? {
            (reqwest::StatusCode::NOT_FOUND, answer) if answer["data"]["metadata"].is_object() => {
                Ok(Some((reqwest::StatusCode::NOT_FOUND, answer)))
            }
            (reqwest::StatusCode::NOT_FOUND, _) => Ok(None),
            (status, answer) => Ok(Some((status, answer))),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, StoreError> {
        match self.request(method, path, token, body).await? {
            (reqwest::StatusCode::NOT_FOUND, _) => {
                Err(StoreError::rejected(format!("vault {path}: not found")))
            }
            (_, answer) => Ok(answer),
        }
    }

    /// Sends a request to each node in turn until one answers; returns the status and the
    /// JSON body of a success or a 404. Errors carry Vault's messages, never secret data.
    async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(reqwest::StatusCode, Value), StoreError> {
        let method = &reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| StoreError::invalid(format!("vault: {e}")))?;
        let body = body.as_ref();
        self.nodes
            .ask(|_, node| self.request_node(node, method, path, token, body))
            .await
    }

    /// Sends a request to `node`. A sealed or standby node, or one that is failing, is
    /// unreachable: the next may serve.
    async fn request_node(
        &self,
        node: &Node,
        method: &reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(reqwest::StatusCode, Value), StoreError> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", node.address()))
            .timeout(REQUEST_TIMEOUT);
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| http::failure(&node.to_string(), &e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| http::failure(&node.to_string(), &e))?;
        let parsed = if body.is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_slice::<Value>(&body)
        };
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            // An answer that is not JSON (not UTF-8, cut short, a proxy's page) is not
            // Vault's: taken as empty, its secrets would vanish from the files.
            let answer = parsed.map_err(|e| {
                StoreError::unreachable(format!(
                    "{node}{}: HTTP {status}: the answer is not JSON: {e}",
                    path_only(path)
                ))
            })?;
            return Ok((status, answer));
        }
        let answer = parsed.unwrap_or(Value::Null);
        let errors: VaultErrors = serde_json::from_value(answer).unwrap_or_default();
        let message = format!(
            "{node}{}: HTTP {status}: {}",
            path_only(path),
            one_line(&errors.errors.join("; "))
        );
        Err(StoreError::new(answer_kind(path, status), message))
    }
}

/// The kind of failure an error status of Vault's stands for. Vault answers a token it does not
/// know or that may not read a path with 403 "permission denied", and an AppRole login with a
/// role or secret ID it does not know with 400 "invalid role or secret ID".
fn answer_kind(path: &str, status: reqwest::StatusCode) -> StoreErrorKind {
    if status == reqwest::StatusCode::BAD_REQUEST && path.starts_with("/v1/auth/") {
        StoreErrorKind::Auth
    } else {
        http::status_kind(status)
    }
}

/// A path without its query, for messages.
fn path_only(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

#[derive(Default, Deserialize)]
struct VaultErrors {
    #[serde(default)]
    errors: Vec<String>,
}

/// When a token given `ttl` expires: never for a TTL of 0 (a root token), nor for one too long
/// for the clock to reach, which Vault's answer alone must not turn into a panic.
fn expiry(ttl: Duration) -> Option<Instant> {
    if ttl.is_zero() {
        return None;
    }
    Instant::now().checked_add(ttl)
}

fn session_from_auth(answer: &Value) -> Result<Session, StoreError> {
    let auth = &answer["auth"];
    let token = auth["client_token"]
        .as_str()
        .ok_or_else(|| StoreError::rejected("vault: the login gave no token"))?;
    let ttl = Duration::from_secs(auth["lease_duration"].as_u64().unwrap_or(0));
    Ok(Session {
        token: token.to_string(),
        expires: expiry(ttl),
        ttl,
        renewable: auth["renewable"].as_bool().unwrap_or(false),
    })
}

/// Where a key's secrets live.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Place {
    /// The mount, without its trailing `/`: `secret`, `team/kv`.
    mount: String,
    /// The mount's KV version.
    version: u8,
    /// The key's path below the mount; empty for the whole mount.
    path: String,
}

impl Place {
    /// The reconfd key of the secret at `path` in this mount.
    fn key(&self, path: &str) -> String {
        format!("/{}/{path}", self.mount)
    }
}

/// A secret as read.
#[derive(Clone, Debug, PartialEq)]
enum Read {
    /// Its fields.
    Found(Value),
    /// It exists, but its latest KV 2 version is deleted or destroyed: no keys.
    Gone,
    /// There is none.
    Missing,
}

/// What a key names, from the listing of the directory at its path and the read of the secret
/// at its path: the names to walk and the secret. A least-privilege policy grants one of the
/// two (`list` on `app/*` but not `read` on `app`, or `read` on the one secret but no `list`),
/// so the other's refusal is left out when the answer of the one shows what the key names: a
/// directory with entries, or a secret. Any other refusal is the answer.
fn settle(
    prefix: &str,
    listed: Result<Option<Vec<String>>, StoreError>,
    own: Result<Read, StoreError>,
) -> Result<(Vec<String>, Read), StoreError> {
    let refused = |e: &StoreError| e.kind() == StoreErrorKind::Auth;
    match (listed, own) {
        (Err(e), Ok(own)) if refused(&e) && own != Read::Missing => {
            tracing::debug!("vault: key `{prefix}` names a secret; its directory: {e}");
            Ok((Vec::new(), own))
        }
        (Ok(Some(names)), Err(e)) if refused(&e) && !names.is_empty() => {
            tracing::debug!("vault: key `{prefix}` names a directory; the secret at it: {e}");
            Ok((names, Read::Missing))
        }
        (listed, own) => Ok((listed?.unwrap_or_default(), own?)),
    }
}

/// A secret as keys, as confd does: a lone `value` field is the secret's value; otherwise
/// the secret as JSON at its own key, and each field (nested objects flattened) below it.
fn flatten_secret(key: &str, data: &Value, entries: &mut KeyMap) {
    if let Some(object) = data.as_object() {
        if object.len() == 1
            && let Some(Value::String(value)) = object.get("value")
        {
            entries.insert(key.to_string(), value.clone());
            return;
        }
        entries.insert(key.to_string(), data.to_string());
        flatten_fields(key, data, entries);
    }
}

fn flatten_fields(key: &str, value: &Value, entries: &mut KeyMap) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                flatten_fields(&format!("{key}/{name}"), field, entries);
            }
        }
        Value::String(text) => {
            entries.insert(key.to_string(), text.clone());
        }
        Value::Null => {}
        other => {
            entries.insert(key.to_string(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_flatten_as_in_confd() {
        let mut entries = KeyMap::new();
        flatten_secret(
            "/secret/app/token",
            &json!({"value": "t0k3n"}),
            &mut entries,
        );
        flatten_secret(
            "/secret/app/db",
            &json!({"user": "app", "port": 5432, "tls": {"on": true}}),
            &mut entries,
        );
        assert_eq!(entries["/secret/app/token"], "t0k3n");
        assert_eq!(entries["/secret/app/db/user"], "app");
        assert_eq!(entries["/secret/app/db/port"], "5432");
        assert_eq!(entries["/secret/app/db/tls/on"], "true");
        assert!(entries["/secret/app/db"].contains("\"user\":\"app\""));
    }

    #[test]
    fn error_statuses_map_to_kinds() {
        use reqwest::StatusCode;
        let cases = [
            (
                "/v1/secret/data/app",
                StatusCode::FORBIDDEN,
                StoreErrorKind::Auth,
            ),
            (
                "/v1/auth/token/lookup-self",
                StatusCode::FORBIDDEN,
                StoreErrorKind::Auth,
            ),
            (
                "/v1/auth/approle/login",
                StatusCode::BAD_REQUEST,
                StoreErrorKind::Auth,
            ),
            (
                "/v1/secret/data/app",
                StatusCode::BAD_REQUEST,
                StoreErrorKind::Rejected,
            ),
            (
                "/v1/secret/data/app",
                StatusCode::METHOD_NOT_ALLOWED,
                StoreErrorKind::Rejected,
            ),
            (
                "/v1/secret/data/app",
                StatusCode::TOO_MANY_REQUESTS,
                StoreErrorKind::Rejected,
            ),
            // Sealed, or a standby that cannot forward.
            (
                "/v1/secret/data/app",
                StatusCode::SERVICE_UNAVAILABLE,
                StoreErrorKind::Unreachable,
            ),
            (
                "/v1/secret/data/app",
                StatusCode::INTERNAL_SERVER_ERROR,
                StoreErrorKind::Unreachable,
            ),
        ];
        for (path, status, kind) in cases {
            assert_eq!(answer_kind(path, status), kind, "{path} {status}");
        }
    }

    #[test]
    fn a_refusal_is_left_out_only_when_the_other_answer_shows_what_the_key_names() {
        fn refused<T>() -> Result<T, StoreError> {
            Err(StoreError::auth("permission denied"))
        }
        let names = || Ok(Some(vec!["db".to_string()]));
        let secret = || Ok(Read::Found(json!({"value": "v"})));
        let (listed, own) = settle("/secret/app", names(), refused()).expect("a directory");
        assert_eq!((listed, own), (vec!["db".to_string()], Read::Missing));
        let (listed, own) = settle("/secret/app/db", refused(), secret()).expect("a secret");
        assert_eq!(
            (listed, own),
            (Vec::new(), Read::Found(json!({"value": "v"})))
        );
        let (_, own) = settle("/secret/app/db", refused(), Ok(Read::Gone)).expect("deleted");
        assert_eq!(own, Read::Gone);
        type Listed = Result<Option<Vec<String>>, StoreError>;
        let cases: [(Listed, Result<Read, StoreError>); 4] = [
            (refused(), refused()),
            (refused(), Ok(Read::Missing)),
            (Ok(None), refused()),
            (Ok(Some(Vec::new())), refused()),
        ];
        for (listed, own) in cases {
            let error = settle("/secret/app", listed, own).expect_err("nothing shows the key");
            assert_eq!(error.kind(), StoreErrorKind::Auth);
        }
        let unreachable = settle(
            "/secret/app",
            names(),
            Err(StoreError::unreachable("sealed")),
        )
        .expect_err("not a refusal");
        assert_eq!(unreachable.kind(), StoreErrorKind::Unreachable);
    }

    #[test]
    fn a_lease_too_long_for_the_clock_never_expires_instead_of_panicking() {
        let session = session_from_auth(&json!({"auth": {
            "client_token": "t", "lease_duration": u64::MAX, "renewable": true
        }}))
        .expect("a session");
        assert_eq!(session.expires, None);
        let session = session_from_auth(&json!({"auth": {
            "client_token": "t", "lease_duration": 60
        }}))
        .expect("a session");
        assert!(session.expires.is_some());
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::arbitrary;

    proptest! {
        #[test]
        fn secrets_flatten_under_their_own_key(
            data in arbitrary::json(&["value", "data", "metadata", "password"])
        ) {
            let mut entries = KeyMap::new();
            flatten_secret("/secret/app", &data, &mut entries);
            prop_assert!(entries.keys().all(|key| key.starts_with("/secret/app")));
        }

        #[test]
        fn login_answers_give_a_session_or_say_why(
            answer in arbitrary::json(&["auth", "client_token", "lease_duration", "renewable"])
        ) {
            if let Err(e) = session_from_auth(&answer) {
                prop_assert!(e.to_string().starts_with("vault: "), "{e}");
            }
        }

        #[test]
        fn a_refusal_is_never_read_as_an_empty_key(
            listed in prop::option::of(prop::collection::vec("[a-z]{0,3}", 0..3)),
            list_refused in any::<bool>(),
            own in 0..3u8,
            read_refused in any::<bool>(),
        ) {
            let refusal = || StoreError::auth("vault: permission denied");
            let listed = if list_refused { Err(refusal()) } else { Ok(listed) };
            let own = if read_refused {
                Err(refusal())
            } else {
                Ok([Read::Missing, Read::Gone, Read::Found(Value::Null)][own as usize].clone())
            };
            let both_refused = list_refused && read_refused;
            let settled = settle("/secret/app", listed, own);
            prop_assert!(!both_refused || settled.is_err(), "{settled:?}");
        }
    }
}
