//! The file store.
use super::*;
use async_trait::async_trait;
use std::path::PathBuf;
pub struct FileStore;
impl FileStore {
    pub fn new(_p: Vec<PathBuf>, _f: Option<String>) -> Result<FileStore, StoreError> {
        todo!()
    }
}
#[async_trait]
impl Store for FileStore {
    fn name(&self) -> &'static str {
        "file"
    }
    async fn fetch(&self, _p: &[String]) -> Result<Snapshot, StoreError> {
        todo!()
    }
    async fn watch(&self, _p: &[String], _s: &Snapshot) -> Result<Option<WatchStream>, StoreError> {
        todo!()
    }
}
