//! An announced key in Redis: a string key that expires (`SET key value PX ttl`), set again
//! about three times per TTL, and deleted on withdrawal only while it still holds the value
//! announced, so that a key someone else has set since is left to them.

use std::sync::Arc;

use async_trait::async_trait;
use redis::Value;

use super::{Client, Failure, RedisOptions, redis_key};
use crate::store::StoreError;
use crate::store::lease::{Announcement, Lease};

/// Deletes `KEYS[1]` only while it holds `ARGV[1]`, in one step on the server.
const DELETE_IF_OURS: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// A key that expires unless it is set again in time.
pub struct RedisLease {
    client: Arc<Client>,
    /// The Redis key name.
    name: String,
    announcement: Announcement,
}

impl RedisLease {
    /// A lease for `announcement` on the nodes of `options`; no connection is made yet.
    pub fn new(
        options: &RedisOptions,
        announcement: Announcement,
    ) -> Result<RedisLease, StoreError> {
        let client = Client::new(options)?;
        Ok(RedisLease {
            name: redis_key(&announcement.key, &client.separator),
            client: Arc::new(client),
            announcement,
        })
    }

    /// Sets the key with its expiry and returns what it held before (`SET ... GET`, Redis
    /// 6.2), `Nil` when it did not exist.
    async fn set(&self) -> Result<Value, StoreError> {
        let milliseconds = u64::try_from(self.announcement.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let (name, value) = (&self.name, &self.announcement.value);
        let (_, before) = self
            .client
            .run(|mut connection| async move {
                redis::cmd("SET")
                    .arg(name)
                    .arg(value)
                    .arg("PX")
                    .arg(milliseconds)
                    .arg("GET")
                    .query_async::<Value>(&mut connection)
                    .await
                    .map_err(Failure::of(format!("SET {name}")))
            })
            .await?;
        Ok(before)
    }
}

#[async_trait]
impl Lease for RedisLease {
    async fn register(&mut self) -> Result<(), StoreError> {
        self.set().await.map(|_| ())
    }

    /// Sets the key again; when it was gone (it expired during an outage, or was deleted), it
    /// is back already, and the loss is reported so that the announcer logs it.
    async fn refresh(&mut self) -> Result<bool, StoreError> {
        Ok(self.set().await? != Value::Nil)
    }

    async fn withdraw(&mut self) -> Result<(), StoreError> {
        let (name, value) = (&self.name, &self.announcement.value);
        self.client
            .run(|mut connection| async move {
                redis::cmd("EVAL")
                    .arg(DELETE_IF_OURS)
                    .arg(1)
                    .arg(name)
                    .arg(value)
                    .query_async::<i64>(&mut connection)
                    .await
                    .map_err(Failure::of(format!("DEL {name}")))
            })
            .await?;
        Ok(())
    }
}
