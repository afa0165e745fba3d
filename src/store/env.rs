//! The environment store.
use super::*;
use async_trait::async_trait;
pub struct EnvStore;
#[async_trait]
impl Store for EnvStore {
    fn name(&self) -> &'static str {
        "env"
    }
    async fn fetch(&self, _p: &[String]) -> Result<Snapshot, StoreError> {
        todo!()
    }
    async fn watch(&self, _p: &[String], _s: &Snapshot) -> Result<Option<WatchStream>, StoreError> {
        todo!()
    }
}
