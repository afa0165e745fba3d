//! Templates: Tera with confd's functions.
use crate::store::Snapshot;
use std::path::Path;
use std::sync::Arc;
pub struct View {
    pub snapshot: Arc<Snapshot>,
    pub prefix: String,
    pub keys: Vec<String>,
}
pub struct Renderer;
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct TemplateError;
impl Renderer {
    pub fn from_file(_p: &Path) -> Result<Renderer, TemplateError> {
        todo!()
    }
    pub fn render(&self, _v: &View) -> Result<String, TemplateError> {
        todo!()
    }
}
