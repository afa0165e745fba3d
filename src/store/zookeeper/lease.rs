//! An announced key in ZooKeeper: an ephemeral znode of a session of its own, whose timeout is
//! the TTL. The client keeps the session alive; when reconfd stops (or its host is lost), the
//! server ends the session once the timeout passes and deletes the znode with it.
//!
//! The server fits the timeout asked for between 2 and 20 of its ticks (`tickTime`, 2 s by
//! default, so 4 s to 40 s); the timeout granted is logged when it differs.

use async_trait::async_trait;
use zookeeper_client as zk;

use super::{ZookeeperOptions, check_node, connect, error_kind, parent_path};
use crate::store::StoreError;
use crate::store::lease::{Announcement, Lease};

/// The parents of the znode are plain persistent znodes, open to all as the store's keys are.
const PARENT: zk::CreateOptions<'static> =
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());

/// The announced znode lives and dies with the session.
const EPHEMERAL: zk::CreateOptions<'static> =
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());

/// An ephemeral znode on a session whose timeout is the TTL.
pub struct ZookeeperLease {
    servers: String,
    announcement: Announcement,
    /// The session holding the znode, once connected.
    client: Option<zk::Client>,
}

impl ZookeeperLease {
    /// A lease for `announcement` on the servers of `options`; no connection is made yet.
    pub fn new(
        options: &ZookeeperOptions,
        announcement: Announcement,
    ) -> Result<ZookeeperLease, StoreError> {
        for node in &options.nodes {
            check_node(node).map_err(|reason| {
                StoreError::invalid(format!("zookeeper node {node:?}: {reason}"))
            })?;
        }
        if !announcement.key.starts_with('/') || announcement.key.ends_with('/') {
            return Err(StoreError::invalid(format!(
                "zookeeper: {:?} is not a znode path (/a/b)",
                announcement.key
            )));
        }
        Ok(ZookeeperLease {
            servers: options.nodes.join(","),
            announcement,
            client: None,
        })
    }

    fn fail(&self, what: &str, cause: &zk::Error) -> StoreError {
        StoreError::new(
            error_kind(cause),
            format!(
                "zookeeper {}: {what} {}: {cause}",
                self.servers, self.announcement.key
            ),
        )
    }

    /// The session, or a new one when there is none or it has ended. A session that lost its
    /// connection is kept: the client reconnects it within its timeout, and with it the znode.
    async fn session(&mut self) -> Result<zk::Client, StoreError> {
        if let Some(client) = self.client.as_ref().filter(|client| live(client.state())) {
            return Ok(client.clone());
        }
        let ttl = self.announcement.ttl;
        let client = connect(&self.servers, ttl).await?;
        if client.session_timeout() != ttl {
            tracing::info!(
                "zookeeper {}: {}: the servers granted a session timeout of {:?} for a TTL of \
                 {ttl:?}",
                self.servers,
                self.announcement.key,
                client.session_timeout()
            );
        }
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Creates the persistent parents of the znode that do not exist yet.
    async fn create_parents(&self, client: &zk::Client) -> Result<(), StoreError> {
        let mut parents = Vec::new();
        let mut path = self.announcement.key.as_str();
        while let Some(parent) = parent_path(path).filter(|parent| *parent != "/") {
            parents.push(parent);
            path = parent;
        }
        for parent in parents.into_iter().rev() {
            match client.create(parent, &[], &PARENT).await {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(self.fail("creating the parent of", &e)),
            }
        }
        Ok(())
    }
}

/// True while a session may still hold its ephemeral znodes.
fn live(state: zk::SessionState) -> bool {
    !matches!(
        state,
        zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed
    )
}

#[async_trait]
impl Lease for ZookeeperLease {
    /// Creates the ephemeral znode. One that exists already belongs to another session (a
    /// reconfd killed a moment ago, whose session has not ended yet): it is left alone, and
    /// the next attempt creates the znode once that session has ended and taken it away.
    async fn register(&mut self) -> Result<(), StoreError> {
        let client = self.session().await?;
        self.create_parents(&client).await?;
        let key = &self.announcement.key;
        match client
            .create(key, self.announcement.value.as_bytes(), &EPHEMERAL)
            .await
        {
            Ok(_) => Ok(()),
            Err(zk::Error::NodeExists) => match client.check_stat(key).await {
                Ok(Some(stat)) if stat.ephemeral_owner == client.session_id().0 => Ok(()),
                Ok(_) => Err(StoreError::rejected(format!(
                    "zookeeper {}: {key} is held by another session until it ends",
                    self.servers
                ))),
                Err(e) => Err(self.fail("reading", &e)),
            },
            Err(e) => Err(self.fail("creating", &e)),
        }
    }

    async fn refresh(&mut self) -> Result<bool, StoreError> {
        let Some(client) = self.client.clone() else {
            return Ok(false);
        };
        match client.state() {
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {}
            state if live(state) => {
                return Err(StoreError::unreachable(format!(
                    "zookeeper {}: the session of {} is disconnected",
                    self.servers, self.announcement.key
                )));
            }
            _ => {
                self.client = None;
                return Ok(false);
            }
        }
        match client.check_stat(&self.announcement.key).await {
            Ok(Some(stat)) => Ok(stat.ephemeral_owner == client.session_id().0),
            Ok(None) => Ok(false),
            Err(e) => Err(self.fail("reading", &e)),
        }
    }

    /// Deletes the znode; when that fails, the session is given up, so that the server
    /// ends it (and the znode with it) within the TTL instead of the client keeping it alive.
    async fn withdraw(&mut self) -> Result<(), StoreError> {
        let Some(client) = self.client.clone() else {
            return Ok(());
        };
        let deleted = self.delete_owned(&client).await;
        if deleted.is_err() {
            self.client = None;
        }
        deleted
    }
}

impl ZookeeperLease {
    /// Deletes the znode if it is this session's.
    async fn delete_owned(&self, client: &zk::Client) -> Result<(), StoreError> {
        let key = &self.announcement.key;
        let owned = match client.check_stat(key).await {
            Ok(stat) => stat.filter(|stat| stat.ephemeral_owner == client.session_id().0),
            Err(e) => return Err(self.fail("reading", &e)),
        };
        if let Some(stat) = owned {
            match client.delete(key, Some(stat.version)).await {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(e) => return Err(self.fail("deleting", &e)),
            }
        }
        Ok(())
    }
}
