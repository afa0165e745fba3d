//! A key bound to a lifetime: what `reconfd announce` keeps in a store. While the holder lives
//! and renews it, the key exists with its value; when the holder stops renewing (it died, its
//! host was lost), the store removes the key once the lifetime runs out.
//!
//! Each store that can bind a key to a lifetime implements [`Lease`] beside its reading code:
//! etcd with a lease, Redis with a key that expires, ZooKeeper with an ephemeral znode of a
//! session, Consul with a session that deletes the key it holds.

use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;

/// What to announce: a key, its value, and the lifetime the store gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The absolute key, such as `/services/crate/h1`.
    pub key: String,
    /// Its value, such as `h1:4300`.
    pub value: String,
    /// How long the key outlives its last renewal.
    pub ttl: Duration,
}

/// One key bound to a lifetime in one store. The announcer calls [`Lease::register`] when it
/// holds no binding, [`Lease::refresh`] about three times per TTL while it holds one, and
/// [`Lease::withdraw`] when the key must go.
#[async_trait]
pub trait Lease: Send {
    /// Creates the key with its value, bound to a new lifetime of the TTL.
    async fn register(&mut self) -> Result<(), StoreError>;

    /// Renews the lifetime. `Ok(false)` when the binding is gone (it ran out while the store
    /// was out of reach, or someone removed the key): the key must be registered again.
    async fn refresh(&mut self) -> Result<bool, StoreError>;

    /// Removes the key and ends its lifetime. Also when the key was not registered: the
    /// store's answer then changes nothing.
    async fn withdraw(&mut self) -> Result<(), StoreError>;
}

/// `ttl` in whole seconds, rounded up, at least one: the unit etcd's leases and Consul's
/// sessions count in.
pub(crate) fn whole_seconds(ttl: Duration) -> u64 {
    ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2500)), 3);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
    }
}
