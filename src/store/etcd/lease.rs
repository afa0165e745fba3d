//! An announced key in etcd: put with a lease of the TTL, kept alive by renewing the lease,
//! withdrawn by revoking it (which deletes the key). When reconfd stops renewing, etcd
//! deletes the key as the lease expires. A live lease does not bring back a key someone
//! deleted or overwrote, so each renewal also checks that the key is still the lease's.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Client, EtcdOptions};
use crate::store::lease::{Announcement, Lease, whole_seconds};
use crate::store::{StoreError, StoreErrorKind};

/// A key bound to an etcd lease.
pub struct EtcdLease {
    client: Arc<Client>,
    announcement: Announcement,
    /// The lease holding the key, once granted.
    lease: Option<i64>,
}

impl EtcdLease {
    /// A lease for `announcement` on the nodes of `options`; no node is contacted yet.
    pub fn new(options: &EtcdOptions, announcement: Announcement) -> Result<EtcdLease, StoreError> {
        Ok(EtcdLease {
            client: Arc::new(Client::new(options)?),
            announcement,
            lease: None,
        })
    }

    /// Revokes the lease held, if any.
    async fn revoke(&mut self) -> Result<(), StoreError> {
        let Some(id) = self.lease else {
            return Ok(());
        };
        let client = &self.client;
        client
            .nodes
            .ask(|_, member| async move {
                member
                    .client(&client.connect)
                    .await?
                    .lease_revoke(id)
                    .await
            })
            .await?;
        self.lease = None;
        Ok(())
    }
}

#[async_trait]
impl Lease for EtcdLease {
    async fn register(&mut self) -> Result<(), StoreError> {
        // A lease left from an earlier registration (whose key was removed) is ended first,
        // so that leases do not pile up in etcd.
        if self.revoke().await.is_err() {
            self.lease = None;
        }
        let ttl = i64::try_from(whole_seconds(self.announcement.ttl)).unwrap_or(i64::MAX);
        let (client, announcement) = (&self.client, &self.announcement);
        let id = client
            .nodes
            .ask(|_, member| async move {
                let node = member.client(&client.connect).await?;
                let (id, granted) = node.lease_grant(ttl).await?;
                if granted != ttl {
                    tracing::debug!(
                        "etcd: {}: lease of {ttl} s granted as {granted} s",
                        announcement.key
                    );
                }
                node.put(
                    announcement.key.as_bytes(),
                    announcement.value.as_bytes(),
                    id,
                )
                .await?;
                Ok::<_, StoreError>(id)
            })
            .await?;
        self.lease = Some(id);
        Ok(())
    }

    async fn refresh(&mut self) -> Result<bool, StoreError> {
        let Some(id) = self.lease else {
            return Ok(false);
        };
        let (client, key) = (&self.client, self.announcement.key.as_bytes());
        let (ttl, held) = client
            .nodes
            .ask(|_, member| async move {
                let node = member.client(&client.connect).await?;
                let ttl = node.lease_keep_alive(id).await?;
                let held = ttl > 0 && node.holds(key, id).await?;
                Ok::<_, StoreError>((ttl, held))
            })
            .await?;
        if ttl == 0 {
            self.lease = None;
        }
        Ok(held)
    }

    async fn withdraw(&mut self) -> Result<(), StoreError> {
        match self.revoke().await {
            Ok(()) => Ok(()),
            // A lease etcd refuses to revoke cannot be renewed either: it expires.
            Err(error) if error.kind() != StoreErrorKind::Unreachable => {
                self.lease = None;
                Err(error)
            }
            Err(error) => Err(error),
        }
    }
}
