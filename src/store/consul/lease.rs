//! An announced key in Consul: a session with the TTL and `Behavior = "delete"` holds the key
//! (`PUT /v1/kv/<key>?acquire=<session>`), renewed with `PUT /v1/session/renew/<id>`; withdrawn
//! by destroying the session, which deletes the key it holds. When reconfd stops renewing,
//! Consul invalidates the session after the TTL (Consul allows itself up to twice the TTL)
//! and deletes the key.
//!
//! Consul accepts session TTLs from 10 s to 24 h; the session has no lock delay (`0s`), so
//! the key can be acquired again as soon as a check passes again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::{Client, ConsulOptions, REQUEST_TIMEOUT, answer_kind, encode_path, parse};
use crate::store::StoreError;
use crate::store::http;
use crate::store::lease::{Announcement, Lease, whole_seconds};
use crate::store::nodes::Node;

/// The shortest session TTL Consul accepts.
pub const MIN_TTL: Duration = Duration::from_secs(10);

/// The longest session TTL Consul accepts.
pub const MAX_TTL: Duration = Duration::from_secs(86_400);

/// A key held by a Consul session that deletes it when the session ends.
pub struct ConsulLease {
    client: Arc<Client>,
    announcement: Announcement,
    /// The session holding the key, once created.
    session: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Created {
    #[serde(rename = "ID")]
    id: String,
}

impl ConsulLease {
    /// A lease for `announcement` on the agents of `options`; no agent is contacted yet.
    /// Fails for a TTL Consul would refuse.
    pub fn new(
        options: &ConsulOptions,
        announcement: Announcement,
    ) -> Result<ConsulLease, StoreError> {
        if !(MIN_TTL..=MAX_TTL).contains(&announcement.ttl) {
            return Err(StoreError::invalid(format!(
                "consul: {}: a session's TTL is from 10s to 24h, not {:?}",
                announcement.key, announcement.ttl
            )));
        }
        Ok(ConsulLease {
            client: Arc::new(Client::new(options)?),
            announcement,
            session: None,
        })
    }

    /// PUTs `body` to `path` with `query` on the first agent that answers, and returns the
    /// answer's body; `None` for a 404 (a session Consul no longer has).
    async fn put(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let client = &self.client;
        client
            .nodes
            .ask(|_, node| {
                let body = body.clone();
                async move { put_to(client, node, path, query, body).await }
            })
            .await
    }

    /// Destroys the session held, if any; with it goes the key.
    async fn destroy(&mut self) -> Result<(), StoreError> {
        let Some(id) = self.session.clone() else {
            return Ok(());
        };
        let path = format!("/v1/session/destroy/{}", encode_path(&id));
        self.put(&path, &[], Vec::new()).await?;
        self.session = None;
        Ok(())
    }
}

/// One PUT to `node`.
async fn put_to(
    client: &Client,
    node: &Node,
    path: &str,
    query: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Option<Vec<u8>>, StoreError> {
    let request = client
        .request(reqwest::Method::PUT, node, path, query)
        .timeout(REQUEST_TIMEOUT)
        .body(body);
    let unreachable = |e: reqwest::Error| http::failure(&format!("{node}{path}"), &e);
    let response = request.send().await.map_err(unreachable)?;
    let status = response.status();
    let body = response.bytes().await.map_err(unreachable)?;
    if status.is_success() {
        return Ok(Some(body.to_vec()));
    }
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&body).trim().to_string();
    Err(StoreError::new(
        answer_kind(status, &text),
        format!("{node}{path}: HTTP {status}: {text}"),
    ))
}

#[async_trait]
impl Lease for ConsulLease {
    async fn register(&mut self) -> Result<(), StoreError> {
        // A session left from an earlier registration is ended first, so that sessions do
        // not pile up in Consul.
        if self.destroy().await.is_err() {
            self.session = None;
        }
        let key = self.announcement.key.clone();
        let create = serde_json::json!({
            "Name": format!("reconfd announce {key}"),
            "TTL": format!("{}s", whole_seconds(self.announcement.ttl)),
            "Behavior": "delete",
            "LockDelay": "0s",
        });
        let path = "/v1/session/create";
        let answer = self
            .put(path, &[], create.to_string().into_bytes())
            .await?
            .unwrap_or_default();
        let created: Created = parse(path, &answer)?;
        self.session = Some(created.id.clone());
        let path = format!("/v1/kv/{}", encode_path(key.trim_start_matches('/')));
        let answer = self
            .put(
                &path,
                &[("acquire", created.id.as_str())],
                self.announcement.value.clone().into_bytes(),
            )
            .await?
            .unwrap_or_default();
        if parse::<bool>(&path, &answer)? {
            return Ok(());
        }
        Err(StoreError::rejected(format!(
            "consul: {key} is held by another session"
        )))
    }

    async fn refresh(&mut self) -> Result<bool, StoreError> {
        let Some(id) = self.session.clone() else {
            return Ok(false);
        };
        let path = format!("/v1/session/renew/{}", encode_path(&id));
        match self.put(&path, &[], Vec::new()).await? {
            Some(_) => Ok(true),
            None => {
                self.session = None;
                Ok(false)
            }
        }
    }

    async fn withdraw(&mut self) -> Result<(), StoreError> {
        self.destroy().await
    }
}
