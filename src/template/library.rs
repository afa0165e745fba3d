//! The templates directory as a library of shared parts: a template may `{% include %}` or
//! `{% extends %}` another file of it (named by its path relative to the directory) and call
//! the components that any file of it defines.
//!
//! The directory is read once per plan (at start and on each SIGHUP, so a changed part reaches
//! every resource that uses it). Each resource's Tera instance gets its own template and only
//! the parts it reaches, found by a light scan of the tags: one resource's broken or unrelated
//! file cannot fail another resource, and a resource without parts costs what it did before.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use super::{Renderer, Resolver, TemplateError};

/// Every file under a templates directory, read and scanned.
pub struct Library {
    root: PathBuf,
    parts: BTreeMap<String, Part>,
}

/// One file of the library.
struct Part {
    /// Its text, or why it could not be read (reported only if a template reaches it).
    source: Result<String, String>,
    references: References,
}

impl Library {
    /// Reads every file under `root` (hidden files and directories left out, as editors'
    /// swap files are). A missing directory is an empty library: templates may live elsewhere.
    pub fn read(root: &Path) -> Library {
        let mut parts = BTreeMap::new();
        let walk = WalkDir::new(root)
            .follow_links(true)
            .into_iter()
            .filter_entry(|entry| entry.depth() == 0 || !is_hidden(entry.file_name()));
        for entry in walk.flatten().filter(|entry| entry.file_type().is_file()) {
            let Some(name) = part_name(root, entry.path()) else {
                continue;
            };
            let source = std::fs::read_to_string(entry.path()).map_err(|e| e.to_string());
            let references = source.as_deref().map(scan).unwrap_or_default();
            parts.insert(name, Part { source, references });
        }
        Library {
            root: root.to_path_buf(),
            parts,
        }
    }

    /// The renderer of the template at `src` with the parts it reaches.
    pub fn renderer(&self, src: &Path, resolver: Resolver) -> Result<Renderer, TemplateError> {
        let unreadable = |message: String| TemplateError {
            location: src.display().to_string(),
            message: format!("cannot read the template: {message}"),
            may_pass: false,
        };
        // A template outside the directory keeps its path as its name.
        let name = part_name(&self.root, src).unwrap_or_else(|| src.display().to_string());
        let own;
        let (source, references) = match self.parts.get(&name) {
            Some(part) => (part.source.clone().map_err(unreadable)?, &part.references),
            None => {
                let source = std::fs::read_to_string(src).map_err(|e| unreadable(e.to_string()))?;
                own = scan(&source);
                (source, &own)
            }
        };
        let mut sources = BTreeMap::from([(name.clone(), source)]);
        let mut pending = self.reached_by(references);
        while let Some(part_name) = pending.pop_first() {
            if sources.contains_key(&part_name) {
                continue;
            }
            let Some(part) = self.parts.get(&part_name) else {
                // Tera reports the missing part where it is named.
                continue;
            };
            let source = part.source.clone().map_err(|message| TemplateError {
                location: self.root.join(&part_name).display().to_string(),
                message: format!("cannot read this shared part of {name}: {message}"),
                may_pass: false,
            })?;
            sources.insert(part_name, source);
            pending.extend(self.reached_by(&part.references));
        }
        Renderer::from_parts(&self.root, &name, sources, resolver)
    }

    /// The parts that `references` name: the files included or extended, and the files
    /// defining the components called.
    fn reached_by(&self, references: &References) -> BTreeSet<String> {
        let mut reached: BTreeSet<String> = references
            .files
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        for call in &references.calls {
            reached.extend(
                self.parts
                    .iter()
                    .filter(|(_, part)| part.references.defines.contains(call))
                    .map(|(name, _)| name.clone()),
            );
        }
        reached
    }
}

/// The library name of `path`: relative to `root`, with `/` between its parts.
fn part_name(root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?;
    let parts: Vec<&str> = relative
        .components()
        .map(|part| part.as_os_str().to_str())
        .collect::<Option<_>>()?;
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|name| name.starts_with('.'))
}

/// What one template names, as its tags read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct References {
    /// Files it includes, extends or imports, with the byte offset of the name.
    pub(super) files: Vec<(String, usize)>,
    /// Components it calls (`{{<name/>}}`, `{% <name> %}`).
    calls: BTreeSet<String>,
    /// Components it defines (`{% component name(...) %}`).
    defines: BTreeSet<String>,
}

/// The references of `source`, found by reading only the start of each tag. A reference
/// inside a comment or a raw block is taken too, which only brings in a part that is not
/// needed.
pub(super) fn scan(source: &str) -> References {
    let mut references = References::default();
    let mut from = 0;
    while let Some(found) = source[from..].find('{') {
        let open = from + found;
        from = open + 1;
        let tag = match source[from..].chars().next() {
            Some('%') => true,
            Some('{') => false,
            _ => continue,
        };
        let inner = source[from + 1..].trim_start_matches('-').trim_start();
        if let Some(call) = inner.strip_prefix('<') {
            let name = identifier(call);
            if !name.is_empty() {
                references.calls.insert(name.to_string());
            }
            continue;
        }
        if !tag {
            continue;
        }
        let word = identifier(inner);
        let after = inner[word.len()..].trim_start();
        match word {
            "include" | "extends" | "import" => {
                let Some(quote) = after.chars().next().filter(|c| matches!(c, '"' | '\'')) else {
                    continue;
                };
                if let Some(end) = after[1..].find(quote) {
                    let offset = source.len() - after.len() + 1;
                    references
                        .files
                        .push((after[1..1 + end].to_string(), offset));
                }
            }
            "component" => {
                let name = identifier(after);
                if !name.is_empty() {
                    references.defines.insert(name.to_string());
                }
            }
            _ => {}
        }
    }
    references
}

/// The dotted identifier `text` starts with.
fn identifier(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(text.len());
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_files_and_components() {
        let source = "{% extends \"base.tmpl\" %}{%- include 'parts/head' -%}\n\
                      {{<ui.row name=\"a\"/>}}{% <box> %}x{% </box> %}\n\
                      {% component local(a) %}{% endcomponent local %}{{ x }}";
        let references = scan(source);
        let files: Vec<&str> = references.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(files, ["base.tmpl", "parts/head"]);
        assert_eq!(&source[references.files[1].1..][..10], "parts/head");
        assert_eq!(
            references.calls,
            BTreeSet::from(["ui.row".to_string(), "box".to_string()])
        );
        assert_eq!(references.defines, BTreeSet::from(["local".to_string()]));
    }
}
