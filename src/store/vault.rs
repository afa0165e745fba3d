//! The Vault store: secrets of the KV secrets engine (version 1 or 2), read as keys.
//!
//! A resource's keys are Vault paths with a leading `/`, mount first: `/secret/app` reads the
//! secrets at and below `app` in the mount `secret`. As in confd, a secret whose only field is
//! `value` is one key (`/secret/app/db` = the value); any other secret is its fields
//! (`/secret/app/db/password`, nested objects further down) and, for `gets`-style use, the
//! whole secret as JSON at its own path. The engine's version is detected per mount (Vault's
//! `sys/internal/ui/mounts` endpoint, which any token may ask) unless `--kv-version` sets it.
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

use super::http::{self, error_chain};
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
    /// KV versions found for mounts, so each mount is asked once.
    versions: Mutex<BTreeMap<String, u8>>,
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
            versions: Mutex::default(),
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
    /// Every secret under `prefixes`, as keys.
    async fn read_all(&self, token: &str, prefixes: &[String]) -> Result<Snapshot, StoreError> {
        // Listing finds every secret first; reading them, one request each, goes on several
        // at a time.
        let mut secrets: Vec<(String, String, u8, String)> = Vec::new();
        for prefix in prefixes {
            let (mount, path) = split_mount(prefix)?;
            let version = self.kv_version(token, mount).await?;
            // Walk from the directory holding the prefix, so `/secret/app` also finds
            // `/secret/app2`, as a plain prefix does for every other store.
            let directory = match path.rfind('/') {
                Some(end) => &path[..=end],
                None => "",
            };
            let mut pending = vec![directory.to_string()];
            while let Some(directory) = pending.pop() {
                for name in self.list(token, mount, version, &directory).await? {
                    let child = format!("{directory}{name}");
                    let key = format!("/{mount}/{}", child.trim_end_matches('/'));
                    if !key.starts_with(prefix.trim_end_matches('/')) && !prefix.starts_with(&key) {
                        continue;
                    }
                    if name.ends_with('/') {
                        pending.push(child);
                    } else {
                        secrets.push((key, mount.to_string(), version, child));
                    }
                }
            }
        }
        let read: Vec<(String, Option<Value>)> = futures_util::stream::iter(secrets)
            .map(|(key, mount, version, secret)| async move {
                self.read(token, &mount, version, &secret)
                    .await
                    .map(|data| (key, data))
            })
            .buffer_unordered(READS_AT_ONCE)
            .try_collect()
            .await?;
        let mut entries = KeyMap::new();
        for (key, data) in read {
            if let Some(data) = data {
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
            VaultAuth::AppRole { role_id, secret_id } => {
                let answer = self
                    .call(
                        "POST",
                        "/v1/auth/approle/login",
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

    /// The KV version of `mount`: set, or asked of Vault once.
    async fn kv_version(&self, token: &str, mount: &str) -> Result<u8, StoreError> {
        if let Some(version) = self.kv_version {
            return Ok(version);
        }
        if let Some(version) = self
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(mount)
        {
            return Ok(*version);
        }
        let path = format!("/v1/sys/internal/ui/mounts/{mount}");
        let answer = self.call("GET", &path, Some(token), None).await?;
        let version = match answer["data"]["options"]["version"].as_str() {
            Some("2") => 2,
            _ => 1,
        };
        self.versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(mount.to_string(), version);
        Ok(version)
    }

    /// The entries of a directory (`name` or `name/` for a subdirectory); none when it does
    /// not exist.
    async fn list(
        &self,
        token: &str,
        mount: &str,
        version: u8,
        directory: &str,
    ) -> Result<Vec<String>, StoreError> {
        let path = match version {
            2 => format!("/v1/{mount}/metadata/{directory}?list=true"),
            _ => format!("/v1/{mount}/{directory}?list=true"),
        };
        match self.call_optional("GET", &path, token).await? {
            Some(answer) => Ok(answer["data"]["keys"]
                .as_array()
                .map(|keys| {
                    keys.iter()
                        .filter_map(|key| key.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()),
            None => Ok(Vec::new()),
        }
    }

    /// A secret's fields; `None` when it does not exist (or was deleted).
    async fn read(
        &self,
        token: &str,
        mount: &str,
        version: u8,
        secret: &str,
    ) -> Result<Option<Value>, StoreError> {
        let path = match version {
            2 => format!("/v1/{mount}/data/{secret}"),
            _ => format!("/v1/{mount}/{secret}"),
        };
        let Some(answer) = self.call_optional("GET", &path, token).await? else {
            return Ok(None);
        };
        let data = match version {
            2 => answer["data"]["data"].clone(),
            _ => answer["data"].clone(),
        };
        Ok((!data.is_null()).then_some(data))
    }

    /// Like [`VaultStore::call`], with Vault's 404 for a missing path as `None`.
    async fn call_optional(
        &self,
        method: &str,
        path: &str,
        token: &str,
    ) -> Result<Option<Value>, StoreError> {
        match self.request(method, path, Some(token), None).await? {
            (reqwest::StatusCode::NOT_FOUND, _) => Ok(None),
            (_, answer) => Ok(Some(answer)),
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
            .map_err(|e| StoreError::unreachable(format!("{node}: {}", error_chain(&e))))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| StoreError::unreachable(format!("{node}: {}", error_chain(&e))))?;
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
            errors.errors.join("; ")
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

/// `/mount/path/...` as (mount, path below it).
fn split_mount(prefix: &str) -> Result<(&str, &str), StoreError> {
    let trimmed = prefix.trim_start_matches('/');
    match trimmed.split_once('/') {
        Some((mount, path)) if !mount.is_empty() => Ok((mount, path)),
        None if !trimmed.is_empty() => Ok((trimmed, "")),
        _ => Err(StoreError::invalid(format!(
            "vault: key `{prefix}` names no secrets engine mount (such as /secret/app)"
        ))),
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
    fn keys_name_their_mount() {
        assert_eq!(
            split_mount("/secret/app/db").expect("valid"),
            ("secret", "app/db")
        );
        assert_eq!(split_mount("/secret").expect("valid"), ("secret", ""));
        assert!(split_mount("/").is_err());
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
        fn prefixes_name_a_mount_or_are_refused_naming_the_key(prefix in any::<String>()) {
            match split_mount(&prefix) {
                Ok((mount, _)) => prop_assert!(!mount.is_empty()),
                Err(e) => prop_assert!(e.to_string().contains(&format!("`{prefix}`")), "{e}"),
            }
        }
    }
}
