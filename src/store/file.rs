//! The file store: YAML, JSON and TOML files, flattened into keys as confd's file backend does.
//!
//! Nested maps become `/a/b/c`, list items `/a/0`, `/a/1`; scalars become strings the way Go
//! prints them (so a confd data file renders the same here); nulls produce no key; YAML's
//! unquoted `yes`, `no`, `on`, `off` are booleans, as in confd's YAML 1.1 reader (see
//! `yaml11`). Directories are read recursively, files in sorted order, hidden files and
//! directories left out, and when two files define the same key the later one wins.
//!
//! A Kubernetes ConfigMap mount works both as a directory and as a single file in it: its
//! data lives in a hidden `..<timestamp>` directory behind a `..data` symlink, which the walk
//! leaves out (the visible symlinks already lead there), and which a watch follows.
//!
//! The store reads every file again on each fetch and on each change a watch sees: data files
//! are small, and reading them whole is what keeps the result exactly equal to a fresh fetch.

mod yaml11;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use globset::{Glob, GlobSet, GlobSetBuilder};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use serde_yaml_ng::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use walkdir::WalkDir;

use super::watch::{self, WatchSender};
use super::{KeyMap, Snapshot, Store, StoreError, WatchStream, under_any};

/// File name globs read from directories when no filter is given.
const DEFAULT_FILTER: &[&str] = &["*.yaml", "*.yml", "*.json", "*.toml"];

/// A watch reads the files once no change has been seen for this long, so that an editor's
/// write-rename-delete sequence is read once, and complete.
const QUIET: Duration = Duration::from_millis(100);

/// Longest a watch waits after the first change before reading, however busy the files are.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Reads keys from YAML, JSON and TOML files and directories.
pub struct FileStore {
    files: DataFiles,
}

impl FileStore {
    /// A store reading `paths` (files or directories) in the order given. Inside directories
    /// only files whose name matches the `filter` glob are read (by default `*.yaml`, `*.yml`,
    /// `*.json` and `*.toml`); a path given as a file is always read. Fails when the filter is
    /// not a valid glob.
    pub fn new(paths: Vec<PathBuf>, filter: Option<String>) -> Result<FileStore, StoreError> {
        let patterns = match &filter {
            Some(filter) => vec![filter.as_str()],
            None => DEFAULT_FILTER.to_vec(),
        };
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = Glob::new(pattern)
                .map_err(|e| StoreError::invalid(format!("invalid file filter: {e}")))?;
            builder.add(glob);
        }
        let filter = builder
            .build()
            .map_err(|e| StoreError::invalid(format!("invalid file filter: {e}")))?;
        Ok(FileStore {
            files: DataFiles { paths, filter },
        })
    }
}

#[async_trait]
impl Store for FileStore {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn fetch(&self, prefixes: &[String]) -> Result<Snapshot, StoreError> {
        self.files.read(prefixes)
    }

    /// Watches every path and, once changes settle, reads all files again and reports the
    /// result as a [`WatchEvent::Replace`](super::WatchEvent::Replace). A file that cannot
    /// be read fails the opening of the watch, and ends a watch open: the daemon then treats
    /// it as any store failure (logged once, counted, retried within a second) and opens the
    /// watch again once the files read, on the paths as they are then (a data directory
    /// replaced, a symlink that leads elsewhere).
    async fn watch(
        &self,
        prefixes: &[String],
        snapshot: &Snapshot,
    ) -> Result<Option<WatchStream>, StoreError> {
        let targets = Targets::resolve(&self.files)?;
        let watches = targets.watches();
        // One pending wake-up is all the reader needs: it reads everything anyway.
        let (wake_tx, wake_rx) = mpsc::channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let wake = match event {
                    Ok(event) => targets.concern(&event),
                    Err(e) => {
                        // Whatever went wrong may have hidden a change.
                        tracing::warn!("file store: watch error: {e}; reading the files again");
                        true
                    }
                };
                if wake {
                    // A full channel already holds a wake-up; a closed one means the watch ended.
                    let _ = wake_tx.try_send(());
                }
            })
            // The system is out of inotify instances for now, as a network store can be out of
            // reach: tried again at the reconnect rate.
            .map_err(|e| StoreError::unreachable(format!("cannot watch the data files: {e}")))?;
        for (path, mode) in &watches {
            watcher
                .watch(path, *mode)
                .map_err(|e| file_error(path, format!("cannot watch: {e}")))?;
        }
        // The files may have changed between the caller's fetch and this watch starting; a
        // read once the watches are in place closes that gap (and is not reported when
        // nothing changed).
        let current = self.files.read(prefixes)?;
        let (events, stream) = watch::channel();
        tokio::spawn(follow(
            Watching {
                _watcher: watcher,
                watches,
            },
            wake_rx,
            events,
            self.files.clone(),
            prefixes.to_vec(),
            (snapshot.clone(), current),
        ));
        Ok(Some(stream))
    }
}

/// A watch in place: notify's watcher (dropping it stops notify) and what it watches.
struct Watching {
    _watcher: RecommendedWatcher,
    watches: BTreeMap<PathBuf, RecursiveMode>,
}

/// Sends `current` if it differs from the daemon's `last`, then reads the files again whenever
/// woken and changes have settled, and sends what changed. Ends when a read fails, or when the
/// paths now call for other watches, so that the daemon opens the watch again. Owns the
/// watcher, so notify stops when the daemon drops the stream.
async fn follow(
    watching: Watching,
    mut wake: mpsc::Receiver<()>,
    events: WatchSender,
    files: DataFiles,
    prefixes: Vec<String>,
    (mut last, current): (Snapshot, Snapshot),
) {
    if current != last {
        last = current.clone();
        if !events.replace(current).await {
            return;
        }
    }
    loop {
        tokio::select! {
            woken = wake.recv() => {
                if woken.is_none() {
                    return;
                }
            }
            () = events.closed() => return,
        }
        settle(&mut wake).await;
        // Reported by the watch opened next, as a failure to open it.
        let Ok(snapshot) = files.read(&prefixes) else {
            return;
        };
        if snapshot != last {
            last = snapshot.clone();
            if !events.replace(snapshot).await {
                return;
            }
        }
        let moved = Targets::resolve(&files).map_or(true, |now| now.watches() != watching.watches);
        if moved {
            tracing::debug!("file store: the data paths moved; watching them anew");
            return;
        }
    }
}

/// Returns once [`QUIET`] passes without a wake-up, or [`MAX_DELAY`] after it was called.
async fn settle(wake: &mut mpsc::Receiver<()>) {
    let deadline = Instant::now() + MAX_DELAY;
    loop {
        let until = (Instant::now() + QUIET).min(deadline);
        match tokio::time::timeout_at(until, wake.recv()).await {
            Ok(Some(())) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

/// The paths a watch reacts to, canonicalized so they compare equal to the paths notify
/// reports.
struct Targets {
    /// Directories given as paths: a change anywhere under them counts.
    dirs: Vec<PathBuf>,
    /// Files given as paths, as (parent directory, file name): editors replace a file by
    /// renaming another over it, so the parent is watched and this name counts, as do names
    /// starting with `..` (see [`Targets::contains`]).
    files: Vec<(PathBuf, OsString)>,
}

impl Targets {
    /// The paths of `files` to watch, and what their symlinks lead to.
    fn resolve(files: &DataFiles) -> Result<Targets, StoreError> {
        let mut targets = Targets {
            dirs: Vec::new(),
            files: Vec::new(),
        };
        for path in &files.paths {
            let metadata = std::fs::metadata(path).map_err(|e| file_error(path, e.to_string()))?;
            if metadata.is_dir() {
                let dir =
                    std::fs::canonicalize(path).map_err(|e| file_error(path, e.to_string()))?;
                targets.dirs.push(dir);
                continue;
            }
            let name = path
                .file_name()
                .ok_or_else(|| file_error(path, "not a file name"))?;
            let parent = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            // Only the parent is canonicalized: the file may be a symlink (a Kubernetes
            // ConfigMap's always is), and events name the link, not what it leads to.
            let parent =
                std::fs::canonicalize(parent).map_err(|e| file_error(parent, e.to_string()))?;
            targets.files.push((parent, name.to_os_string()));
        }
        targets.follow_links(&files.list()?);
        Ok(targets)
    }

    /// Adds the files that symlinked data files lead to, where no watch covers them yet: an
    /// edit of a link's target (a stow or Ansible layout) changes nothing the link's own
    /// directory sees.
    fn follow_links(&mut self, data_files: &[PathBuf]) {
        for file in data_files {
            let link = std::fs::symlink_metadata(file).is_ok_and(|m| m.file_type().is_symlink());
            let Some(target) = link.then(|| std::fs::canonicalize(file).ok()).flatten() else {
                continue;
            };
            if let (false, Some(parent), Some(name)) =
                (self.contains(&target), target.parent(), target.file_name())
            {
                self.files.push((parent.to_path_buf(), name.to_os_string()));
            }
        }
    }

    /// The directories to hand to notify. A directory inside another watched one needs no
    /// watch of its own, and watching it again non-recursively could narrow the outer watch.
    fn watches(&self) -> BTreeMap<PathBuf, RecursiveMode> {
        let mut watches = BTreeMap::new();
        for dir in &self.dirs {
            let inside_another = self
                .dirs
                .iter()
                .any(|other| other != dir && dir.starts_with(other));
            if !inside_another {
                watches.insert(dir.clone(), RecursiveMode::Recursive);
            }
        }
        for (parent, _) in &self.files {
            if !self.dirs.iter().any(|dir| parent.starts_with(dir)) {
                watches
                    .entry(parent.clone())
                    .or_insert(RecursiveMode::NonRecursive);
            }
        }
        watches
    }

    /// Whether `event` may have changed what the files say.
    fn concern(&self, event: &notify::Event) -> bool {
        if matches!(event.kind, EventKind::Access(_)) {
            return false;
        }
        // An event without paths (the kernel's queue overflowed) may hide any change.
        event.paths.is_empty() || event.paths.iter().any(|path| self.contains(path))
    }

    /// Whether a change at `path` may change a watched file. Kubernetes updates a ConfigMap
    /// without touching the file's own symlink (`app.yaml -> ..data/app.yaml`): it writes a
    /// new `..<timestamp>` directory and renames a new `..data` link over the old one. Those
    /// `..` names are Kubernetes' own, so a change to one next to a watched file counts too.
    fn contains(&self, path: &Path) -> bool {
        self.dirs.iter().any(|dir| path.starts_with(dir))
            || self.files.iter().any(|(parent, name)| {
                path.parent() == Some(parent.as_path())
                    && path.file_name().is_some_and(|file_name| {
                        file_name == name.as_os_str()
                            || file_name.as_encoded_bytes().starts_with(b"..")
                    })
            })
    }
}

/// The paths and filter of a store: everything needed to read it, cheap to clone into a
/// watch task.
#[derive(Clone)]
struct DataFiles {
    paths: Vec<PathBuf>,
    filter: GlobSet,
}

impl DataFiles {
    /// Reads every file and keeps the keys under any of `prefixes`.
    fn read(&self, prefixes: &[String]) -> Result<Snapshot, StoreError> {
        let files = self.list()?;
        // Each key with its value and the index of the file that defined it, to name both
        // files when a later one overrides it.
        let mut entries: BTreeMap<String, (String, usize)> = BTreeMap::new();
        for (index, file) in files.iter().enumerate() {
            for (key, value) in read_file(file)? {
                if !under_any(&key, prefixes) {
                    continue;
                }
                if let Some((_, earlier)) = entries.insert(key.clone(), (value, index))
                    && earlier != index
                {
                    tracing::warn!(
                        "file store: key {key} is defined in {} and again in {}; the latter wins",
                        files[earlier].display(),
                        file.display()
                    );
                }
            }
        }
        Ok(Snapshot {
            entries: entries
                .into_iter()
                .map(|(key, (value, _))| (key, value))
                .collect::<KeyMap>(),
            ..Snapshot::default()
        })
    }

    /// The files to read, in order: the paths as given, each directory's matching files in
    /// sorted order. Hidden entries inside a directory are left out: a ConfigMap mount's
    /// `..<timestamp>` directory holds the same files again (which would define every key
    /// twice), and other hidden files are version control's or an editor's.
    fn list(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut files = Vec::new();
        for path in &self.paths {
            let metadata = std::fs::metadata(path).map_err(|e| file_error(path, e.to_string()))?;
            if !metadata.is_dir() {
                files.push(path.clone());
                continue;
            }
            let walk = WalkDir::new(path)
                .min_depth(1)
                .sort_by_file_name()
                .into_iter()
                // The directory given is not an entry (min_depth), so it is read even if hidden.
                .filter_entry(|entry| !entry.file_name().as_encoded_bytes().starts_with(b"."));
            for entry in walk {
                let entry = entry.map_err(|e| {
                    let at = e.path().unwrap_or(path).to_path_buf();
                    let message = e
                        .io_error()
                        .map_or_else(|| e.to_string(), ToString::to_string);
                    file_error(&at, message)
                })?;
                if !self.filter.is_match(Path::new(entry.file_name())) {
                    continue;
                }
                // Symlinks to files count as files (a Kubernetes ConfigMap is all symlinks);
                // symlinks to directories are not followed, as confd does not.
                let is_file = if entry.path_is_symlink() {
                    std::fs::metadata(entry.path())
                        .map_err(|e| file_error(entry.path(), e.to_string()))?
                        .is_file()
                } else {
                    entry.file_type().is_file()
                };
                if is_file {
                    files.push(entry.into_path());
                }
            }
        }
        Ok(files)
    }
}

/// Parses one file by its extension and flattens it into (key, value) pairs.
fn read_file(path: &Path) -> Result<Vec<(String, String)>, StoreError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, e.to_string()))?;
    let text = super::text(&bytes).map_err(|fault| {
        let (line, column) = fault.line_column(&bytes);
        file_error(path, format!("line {line} column {column}: {fault}"))
    })?;
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let tree = match extension {
        // JSON is read into a YAML value so that all three formats flatten alike; it is a
        // self-describing format, so nothing is lost.
        "json" => serde_json::from_str::<Value>(text)
            .map_err(|e| file_error(path, located(e.line(), e.column(), &e.to_string())))?,
        "toml" => {
            let table = text
                .parse::<toml::Table>()
                .map_err(|e| file_error(path, toml_message(text, &e)))?;
            from_toml(toml::Value::Table(table))
        }
        _ => {
            let parse = || {
                serde_yaml_ng::from_str::<Value>(text)
                    .map_err(|e| file_error(path, yaml_message(&e)))
            };
            let mut tree = parse()?;
            if let Err(disagreement) = yaml11::resolve_booleans(text, &mut tree) {
                // Only a parser bug or a corner of YAML where the two parsers differ gets
                // here. The file still reads as it would with YAML 1.2 rather than failing.
                tracing::warn!(
                    "file store: {}: {disagreement}; its yes/no/on/off words are read as strings",
                    path.display()
                );
                tree = parse()?;
            }
            // Go's YAML decoder, which confd uses, applies `<<` merge keys.
            tree.apply_merge()
                .map_err(|e| file_error(path, yaml_message(&e)))?;
            tree
        }
    };
    let mut pairs = Vec::new();
    flatten(&tree, "/", &mut pairs).map_err(|message| file_error(path, message))?;
    Ok(pairs)
}

/// Appends the keys of `node`, found at `key`, to `out`, as confd's `nodeWalk` does.
fn flatten(node: &Value, key: &str, out: &mut Vec<(String, String)>) -> Result<(), String> {
    match node {
        Value::Null => {}
        Value::Bool(b) => out.push((key.to_string(), b.to_string())),
        Value::Number(n) => out.push((key.to_string(), number(n))),
        Value::String(s) => out.push((key.to_string(), s.clone())),
        Value::Sequence(items) => {
            for (index, item) in items.iter().enumerate() {
                flatten(item, &join(key, &index.to_string()), out)?;
            }
        }
        Value::Mapping(map) => {
            for (name, value) in map {
                flatten(value, &join(key, &map_key(name, key)?), out)?;
            }
        }
        Value::Tagged(tagged) => flatten(&tagged.value, key, out)?,
    }
    Ok(())
}

/// A map key as a path segment. YAML allows any value as a key; scalars are spelled as their
/// values are, anything else cannot name a key.
fn map_key(name: &Value, parent: &str) -> Result<String, String> {
    match name {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(number(n)),
        Value::Tagged(tagged) => map_key(&tagged.value, parent),
        Value::Null | Value::Sequence(_) | Value::Mapping(_) => Err(format!(
            "a map key under {parent} is not a string, number or boolean"
        )),
    }
}

/// A number as Go prints it: integers in decimal, floats with `strconv.FormatFloat(f, 'f',
/// -1, 64)` (shortest exact form, never an exponent).
fn number(n: &serde_yaml_ng::Number) -> String {
    match n.as_f64() {
        Some(f) if n.is_f64() => format_float(f),
        _ => n.to_string(),
    }
}

/// Rust's `Display` for `f64` is already the shortest round-tripping form without exponent;
/// only the infinities are spelled differently in Go.
fn format_float(f: f64) -> String {
    if f == f64::INFINITY {
        "+Inf".to_string()
    } else if f == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        f.to_string()
    }
}

/// `base` and `name` joined and cleaned like Go's `path.Join`: empty and `.` segments vanish,
/// `..` removes the one before, and a `/` inside a map key nests.
fn join(base: &str, name: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in base.split('/').chain(name.split('/')) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    format!("/{}", segments.join("/"))
}

/// A TOML document as a YAML value; datetimes become their TOML spelling.
fn from_toml(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::Number(i.into()),
        toml::Value::Float(f) => Value::Number(f.into()),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Sequence(items.into_iter().map(from_toml).collect()),
        toml::Value::Table(table) => Value::Mapping(
            table
                .into_iter()
                .map(|(key, value)| (Value::String(key), from_toml(value)))
                .collect(),
        ),
    }
}

fn yaml_message(error: &serde_yaml_ng::Error) -> String {
    match error.location() {
        Some(at) => located(at.line(), at.column(), &error.to_string()),
        None => error.to_string(),
    }
}

fn toml_message(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    match error.span() {
        Some(span) => {
            // A span always starts on a character boundary; the fallback only guards slicing.
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line} column {column}: {message}")
        }
        None => message.to_string(),
    }
}

/// `line L column C: message`, with the place moved to the front: the parser's own ` at line
/// L column C` is dropped from the message so it is not said twice.
fn located(line: usize, column: usize, message: &str) -> String {
    let place = format!(" at line {line} column {column}");
    let message = message.replacen(&place, "", 1);
    format!("line {line} column {column}: {message}")
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> StoreError {
    StoreError::file(path.display(), message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoreErrorKind, WatchEvent};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create dir");
        }
        std::fs::write(&path, text).expect("write");
        path
    }

    fn keys(pairs: &[(&str, &str)]) -> KeyMap {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    fn everything() -> Vec<String> {
        vec!["/".to_string()]
    }

    fn fetch(
        paths: Vec<PathBuf>,
        filter: Option<&str>,
        prefixes: &[String],
    ) -> Result<KeyMap, StoreError> {
        let store = FileStore::new(paths, filter.map(str::to_string))?;
        store.files.read(prefixes).map(|snapshot| snapshot.entries)
    }

    /// Reads `text` as a file named `name` and returns its keys.
    fn parse(name: &str, text: &str) -> Result<KeyMap, StoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(dir.path(), name, text);
        fetch(vec![path], None, &everything())
    }

    fn file_error_of(result: Result<KeyMap, StoreError>) -> (String, String) {
        match result {
            Err(e) if e.kind() == StoreErrorKind::File => split_file_error(&e),
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    /// The path and the message of a file error, `<path>: <message>`; the test files' paths
    /// hold no `: `.
    fn split_file_error(error: &StoreError) -> (String, String) {
        let text = error.to_string();
        match text.split_once(": ") {
            Some((path, message)) => (path.to_string(), message.to_string()),
            None => panic!("a file error names its file: {text}"),
        }
    }

    #[test]
    fn nested_maps_and_lists_flatten_to_paths() {
        let entries = parse(
            "data.yaml",
            "app:\n  db:\n    host: db1\n  servers:\n    - web1\n    - web2\n    - name: web3\n",
        )
        .expect("parse");
        assert_eq!(
            entries,
            keys(&[
                ("/app/db/host", "db1"),
                ("/app/servers/0", "web1"),
                ("/app/servers/1", "web2"),
                ("/app/servers/2/name", "web3"),
            ])
        );
    }

    #[test]
    fn scalars_are_spelled_as_go_prints_them() {
        let entries = parse(
            "data.yaml",
            "int: 8080\nnegative: -3\nhalf: 1.5\nwhole: 3.0\nbig: 1e21\nsmall: 0.0001\n\
             enabled: true\ndisabled: false\nnothing: null\ntilde: ~\ninf: .inf\nquoted: \"007\"\n",
        )
        .expect("parse");
        assert_eq!(
            entries,
            keys(&[
                ("/big", "1000000000000000000000"),
                ("/enabled", "true"),
                ("/half", "1.5"),
                ("/inf", "+Inf"),
                ("/int", "8080"),
                ("/negative", "-3"),
                ("/disabled", "false"),
                ("/quoted", "007"),
                ("/small", "0.0001"),
                ("/whole", "3"),
            ])
        );
    }

    #[test]
    fn unquoted_yaml_1_1_boolean_words_are_booleans_as_in_confd() {
        let entries = parse(
            "data.yaml",
            "v:\n  word_yes: yes\n  word_no: NO\n  word_on: On\n  letter_y: y\n  quoted_off: 'off'\n  \
             quoted_n: \"n\"\n  tagged: !!str yes\n  list: [on, 'on', Off]\n  yes: key\n",
        )
        .expect("parse");
        assert_eq!(
            entries,
            keys(&[
                ("/v/letter_y", "true"),
                ("/v/list/0", "true"),
                ("/v/list/1", "on"),
                ("/v/list/2", "false"),
                ("/v/quoted_n", "n"),
                ("/v/quoted_off", "off"),
                ("/v/tagged", "yes"),
                // go-yaml v2 reads a plain `yes` key as the boolean true too; confd's flattening
                // panics on it (it asserts every key is a string), reconfd spells it.
                ("/v/true", "key"),
                ("/v/word_no", "false"),
                ("/v/word_on", "true"),
                ("/v/word_yes", "true"),
            ])
        );
    }

    #[test]
    fn boolean_words_merged_from_an_anchor_are_booleans() {
        let entries = parse(
            "data.yaml",
            "base: &base\n  tls: on\nweb:\n  <<: *base\n  debug: off\n",
        )
        .expect("parse");
        assert_eq!(
            entries,
            keys(&[
                ("/base/tls", "true"),
                ("/web/debug", "false"),
                ("/web/tls", "true")
            ])
        );
    }

    #[test]
    fn a_file_whose_yaml_1_1_reading_fails_is_read_as_yaml_1_2() {
        // serde_yaml_ng (libyaml) takes a comment right after a quoted scalar, which YAML and
        // the second parser do not: the file is read, its words stay strings.
        let entries = parse("data.yaml", "a: \"x\"#note\nb: yes\n").expect("parse");
        assert_eq!(entries, keys(&[("/a", "x"), ("/b", "yes")]));
    }

    #[test]
    fn json_strings_that_spell_boolean_words_stay_strings() {
        let entries = parse("data.json", r#"{"a": "yes", "b": "off"}"#).expect("parse");
        assert_eq!(entries, keys(&[("/a", "yes"), ("/b", "off")]));
    }

    #[test]
    fn non_string_yaml_keys_are_stringified() {
        let entries = parse(
            "data.yaml",
            "ports:\n  80: http\n  443: https\n  1.5: odd\nflags:\n  true: tls\n",
        )
        .expect("parse");
        assert_eq!(
            entries,
            keys(&[
                ("/flags/true", "tls"),
                ("/ports/1.5", "odd"),
                ("/ports/443", "https"),
                ("/ports/80", "http"),
            ])
        );
    }

    #[test]
    fn keys_are_joined_like_go_path_join() {
        let entries = parse("data.yaml", "a/b:\n  c: 1\nd:\n  \"\": 2\n").expect("parse");
        assert_eq!(entries, keys(&[("/a/b/c", "1"), ("/d", "2")]));
    }

    #[test]
    fn a_collection_as_map_key_is_an_error() {
        let (path, message) = file_error_of(parse("data.yaml", "app:\n  ? [a, b]\n  : 1\n"));
        assert!(path.ends_with("data.yaml"), "{path}");
        assert!(message.contains("/app"), "{message}");
    }

    #[test]
    fn yaml_merge_keys_are_applied() {
        let entries = parse(
            "data.yaml",
            "base: &base\n  port: 80\nweb:\n  <<: *base\n  host: web1\n",
        )
        .expect("parse");
        assert_eq!(
            entries,
            keys(&[
                ("/base/port", "80"),
                ("/web/host", "web1"),
                ("/web/port", "80")
            ])
        );
    }

    #[test]
    fn json_files_are_read() {
        let entries = parse(
            "data.json",
            r#"{"app": {"port": 8080, "ratio": 1.5, "whole": 3.0, "on": true, "none": null, "hosts": ["a", "b"]}}"#,
        )
        .expect("parse");
        assert_eq!(
            entries,
            keys(&[
                ("/app/hosts/0", "a"),
                ("/app/hosts/1", "b"),
                ("/app/on", "true"),
                ("/app/port", "8080"),
                ("/app/ratio", "1.5"),
                ("/app/whole", "3"),
            ])
        );
    }

    #[test]
    fn toml_files_are_read() {
        let entries = parse(
            "data.toml",
            "[app]\nport = 8080\nratio = 1.5\nwhole = 3.0\non = true\nhosts = [\"a\", \"b\"]\n\
             since = 1979-05-27T07:32:00Z\n\n[[app.backends]]\nname = \"db\"\n",
        )
        .expect("parse");
        assert_eq!(
            entries,
            keys(&[
                ("/app/backends/0/name", "db"),
                ("/app/hosts/0", "a"),
                ("/app/hosts/1", "b"),
                ("/app/on", "true"),
                ("/app/port", "8080"),
                ("/app/ratio", "1.5"),
                ("/app/since", "1979-05-27T07:32:00Z"),
                ("/app/whole", "3"),
            ])
        );
    }

    #[test]
    fn syntax_errors_name_the_file_line_and_column() {
        let (path, message) = file_error_of(parse("data.yaml", "app:\n  servers: [unclosed\n"));
        assert!(path.ends_with("data.yaml"), "{path}");
        assert!(message.starts_with("line 3 column 1: "), "{message}");
        assert!(!message.contains(" at line 3 column 1"), "{message}");

        let (path, message) = file_error_of(parse("data.json", "{\"app\":\n  [1,}\n"));
        assert!(path.ends_with("data.json"), "{path}");
        assert_eq!(message, "line 2 column 6: expected value");

        let (path, message) = file_error_of(parse("data.toml", "[app]\nport = = 1\n"));
        assert!(path.ends_with("data.toml"), "{path}");
        assert_eq!(message, "line 2 column 8: extra `=`, expected nothing");
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.yaml");
        let (path, _) = file_error_of(fetch(vec![missing.clone()], None, &everything()));
        assert_eq!(path, missing.display().to_string());
    }

    #[test]
    fn an_invalid_filter_is_an_error_naming_it() {
        match FileStore::new(Vec::new(), Some("data[.yaml".to_string())) {
            Err(e) => assert!(e.to_string().contains("data[.yaml"), "{e}"),
            Ok(_) => panic!("an invalid glob was accepted"),
        }
    }

    #[test]
    fn directories_are_read_recursively_through_the_filter() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "a.yaml", "a: 1\n");
        write(dir.path(), "nested/b.yml", "b: 2\n");
        write(dir.path(), "nested/deeper/c.json", "{\"c\": 3}\n");
        write(dir.path(), "d.toml", "d = 4\n");
        write(dir.path(), "notes.txt", "e: 5\n");
        write(dir.path(), ".a.yaml.swp", "f: 6\n");
        write(dir.path(), ".hidden.yaml", "g: 7\n");
        write(dir.path(), ".git/h.yaml", "h: 8\n");
        let entries = fetch(vec![dir.path().to_path_buf()], None, &everything()).expect("read");
        assert_eq!(
            entries,
            keys(&[("/a", "1"), ("/b", "2"), ("/c", "3"), ("/d", "4")])
        );

        let only_yaml = fetch(
            vec![dir.path().to_path_buf()],
            Some("*.yaml"),
            &everything(),
        )
        .expect("read");
        assert_eq!(only_yaml, keys(&[("/a", "1")]));
    }

    #[test]
    fn a_file_given_explicitly_is_read_whatever_the_filter() {
        let dir = tempfile::tempdir().expect("temp dir");
        let notes = write(dir.path(), "notes.txt", "e: 5\n");
        let entries = fetch(vec![notes], Some("*.json"), &everything()).expect("read");
        assert_eq!(entries, keys(&[("/e", "5")]));
    }

    #[test]
    fn symlinked_files_in_directories_are_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "real/app.yaml", "app: 1\n");
        std::os::unix::fs::symlink("real/app.yaml", dir.path().join("app.yaml")).expect("link");
        std::os::unix::fs::symlink("real", dir.path().join("linked-dir")).expect("link");
        let files = FileStore::new(vec![dir.path().to_path_buf()], None)
            .expect("store")
            .files
            .list()
            .expect("list");
        assert_eq!(
            files,
            [
                dir.path().join("app.yaml"),
                dir.path().join("real/app.yaml")
            ]
        );
    }

    /// Builds a Kubernetes ConfigMap mount in `dir`: `app.yaml -> ..data/app.yaml`,
    /// `..data -> ..v1`, `..v1/app.yaml` holding `text`.
    fn configmap(dir: &Path, text: &str) -> PathBuf {
        write(dir, "..v1/app.yaml", text);
        std::os::unix::fs::symlink("..v1", dir.join("..data")).expect("link");
        let path = dir.join("app.yaml");
        std::os::unix::fs::symlink("..data/app.yaml", &path).expect("link");
        path
    }

    #[test]
    fn a_configmap_directory_is_read_once_and_hidden_files_are_skipped() {
        let dir = tempfile::tempdir().expect("temp dir");
        configmap(dir.path(), "app:\n  port: 80\n");
        let files = FileStore::new(vec![dir.path().to_path_buf()], None)
            .expect("store")
            .files
            .list()
            .expect("list");
        assert_eq!(files, [dir.path().join("app.yaml")]);
        let entries = fetch(vec![dir.path().to_path_buf()], None, &everything()).expect("read");
        assert_eq!(entries, keys(&[("/app/port", "80")]));
    }

    #[test]
    fn hidden_paths_given_explicitly_are_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let hidden_file = write(dir.path(), ".a.yaml", "a: 1\n");
        write(dir.path(), ".config/b.yaml", "b: 2\n");
        let entries = fetch(
            vec![hidden_file, dir.path().join(".config")],
            None,
            &everything(),
        )
        .expect("read");
        assert_eq!(entries, keys(&[("/a", "1"), ("/b", "2")]));
    }

    #[test]
    fn the_later_file_wins_for_a_duplicate_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "data/1.yaml", "app:\n  port: 80\n  host: a\n");
        write(dir.path(), "data/2.yaml", "app:\n  port: 81\n");
        let last = write(dir.path(), "last.yaml", "app:\n  host: b\n");
        let entries =
            fetch(vec![dir.path().join("data"), last], None, &everything()).expect("read");
        assert_eq!(entries, keys(&[("/app/host", "b"), ("/app/port", "81")]));
    }

    #[test]
    fn prefixes_select_by_plain_string_prefix_as_in_confd() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(
            dir.path(),
            "data.yaml",
            "app:\n  x: 1\napple: 2\ndb:\n  host: h\nother: 3\n",
        );
        let entries =
            fetch(vec![path], None, &["/app".to_string(), "/db".to_string()]).expect("read");
        assert_eq!(
            entries,
            keys(&[("/app/x", "1"), ("/apple", "2"), ("/db/host", "h")])
        );
    }

    /// The watch of `store` over `prefixes`, the daemon holding `snapshot`.
    async fn watching(store: &FileStore, prefixes: &[String], snapshot: &Snapshot) -> WatchStream {
        store
            .watch(prefixes, snapshot)
            .await
            .expect("watch")
            .expect("the file store can watch")
    }

    /// The event of a read that found `pairs`.
    fn replaced(pairs: &[(&str, &str)]) -> WatchEvent {
        WatchEvent::Replace(Snapshot {
            entries: keys(pairs),
            ..Snapshot::default()
        })
    }

    async fn next_event(stream: &mut WatchStream) -> Result<WatchEvent, StoreError> {
        tokio::time::timeout(Duration::from_secs(5), stream.recv())
            .await
            .expect("an event within 5 s")
            .expect("the stream is open")
    }

    #[tokio::test]
    async fn watch_follows_an_editor_save_and_reports_a_broken_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(dir.path(), "app.yaml", "app:\n  name: one\n");
        let store = FileStore::new(vec![path.clone()], None).expect("store");
        let prefixes = vec!["/app".to_string()];
        let snapshot = store.fetch(&prefixes).await.expect("fetch");
        let mut stream = watching(&store, &prefixes, &snapshot).await;

        // An editor-style save: write a new file, rename it over the old one.
        write(dir.path(), ".app.yaml.swp", "app:\n  name: two\n");
        std::fs::rename(dir.path().join(".app.yaml.swp"), &path).expect("rename");
        assert_eq!(
            next_event(&mut stream).await.expect("read"),
            replaced(&[("/app/name", "two")])
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(500), stream.recv())
                .await
                .is_err(),
            "one save is reported once"
        );

        // A broken file ends the watch; opening it again says what is wrong, as the daemon
        // does at its retries, and works once the file is mended.
        write(dir.path(), "app.yaml", "app: [broken\n");
        let ended = tokio::time::timeout(Duration::from_secs(5), stream.recv())
            .await
            .expect("the watch ends within 5 s");
        assert!(ended.is_none(), "{ended:?}");
        match store.watch(&prefixes, &snapshot).await {
            Err(e) if e.kind() == StoreErrorKind::File => {
                let (at, message) = split_file_error(&e);
                assert_eq!(at, path.display().to_string());
                assert!(message.contains("line"), "{message}");
            }
            Err(e) => panic!("expected a file error, got {e}"),
            Ok(_) => panic!("expected a file error, got a watch"),
        }
        write(dir.path(), "app.yaml", "app:\n  name: three\n");
        let mut stream = watching(&store, &prefixes, &snapshot).await;
        assert_eq!(
            next_event(&mut stream).await.expect("read"),
            replaced(&[("/app/name", "three")]),
            "the mended file, against the snapshot the daemon still holds"
        );
    }

    #[tokio::test]
    async fn watch_follows_the_file_a_symlink_leads_to_and_a_replaced_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("real")).expect("mkdir");
        let target = write(&dir.path().join("real"), "data.yaml", "app:\n  v: r1\n");
        let link = dir.path().join("link.yaml");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let store = FileStore::new(vec![link], None).expect("store");
        let prefixes = vec!["/app".to_string()];
        let snapshot = store.fetch(&prefixes).await.expect("fetch");
        let mut stream = watching(&store, &prefixes, &snapshot).await;
        // Written in place, where the link leads: nothing changes in the link's directory.
        std::fs::write(&target, "app:\n  v: r2\n").expect("write");
        assert_eq!(
            next_event(&mut stream).await.expect("read"),
            replaced(&[("/app/v", "r2")])
        );

        // The directory is replaced: the watch ends, opening it fails while the file is
        // missing, and the new directory is watched once it is there.
        std::fs::remove_dir_all(dir.path().join("real")).expect("rm");
        let ended = tokio::time::timeout(Duration::from_secs(5), stream.recv())
            .await
            .expect("the watch ends within 5 s");
        assert!(ended.is_none(), "{ended:?}");
        assert!(store.watch(&prefixes, &snapshot).await.is_err());
        std::fs::create_dir(dir.path().join("real")).expect("mkdir");
        write(&dir.path().join("real"), "data.yaml", "app:\n  v: r3\n");
        let mut stream = watching(&store, &prefixes, &snapshot).await;
        next_event(&mut stream).await.expect("the new file");
        std::fs::write(&target, "app:\n  v: r4\n").expect("write");
        assert_eq!(
            next_event(&mut stream).await.expect("read"),
            replaced(&[("/app/v", "r4")]),
            "an edit in the new directory"
        );
    }

    #[tokio::test]
    async fn watch_sees_new_files_in_nested_directories() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "a.yaml", "app:\n  a: 1\n");
        std::fs::create_dir(dir.path().join("nested")).expect("mkdir");
        let store = FileStore::new(vec![dir.path().to_path_buf()], None).expect("store");
        let prefixes = vec!["/app".to_string()];
        let snapshot = store.fetch(&prefixes).await.expect("fetch");
        let mut stream = watching(&store, &prefixes, &snapshot).await;

        write(dir.path(), "nested/b.yaml", "app:\n  b: 2\n");
        assert_eq!(
            next_event(&mut stream).await.expect("read"),
            replaced(&[("/app/a", "1"), ("/app/b", "2")])
        );
    }

    #[tokio::test]
    async fn watch_of_a_configmap_file_follows_a_kubernetes_update() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = configmap(dir.path(), "app:\n  name: one\n");
        let store = FileStore::new(vec![path], None).expect("store");
        let prefixes = vec!["/app".to_string()];
        let snapshot = store.fetch(&prefixes).await.expect("fetch");
        let mut stream = watching(&store, &prefixes, &snapshot).await;
        // Past the watch's initial read, so that only the update's events can report it.
        tokio::time::sleep(QUIET * 3).await;

        // Kubernetes' atomic writer: a new data directory, then a new `..data` link renamed
        // over the old one; `app.yaml` itself is not touched.
        write(dir.path(), "..v2/app.yaml", "app:\n  name: two\n");
        std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).expect("link");
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).expect("rename");
        assert_eq!(
            next_event(&mut stream).await.expect("read"),
            replaced(&[("/app/name", "two")])
        );
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::arbitrary;

    /// Reads `text` as a data file with `extension`: no panic, every key absolute, and an
    /// error names the file (JSON's and TOML's with the line).
    fn check(extension: &str, text: &[u8]) -> Result<(), TestCaseError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(format!("data.{extension}"));
        std::fs::write(&path, text).expect("write data file");
        match read_file(&path) {
            Ok(pairs) => prop_assert!(pairs.iter().all(|(key, _)| key.starts_with('/'))),
            Err(e) => {
                let message = e.to_string();
                prop_assert!(
                    message.starts_with(&format!("{}: ", path.display())),
                    "{message}"
                );
                if extension != "yaml" {
                    prop_assert!(message.contains("line "), "{message}");
                }
            }
        }
        Ok(())
    }

    /// YAML whose scalars are YAML 1.1 words, numbers, quotes and arbitrary text, in maps,
    /// lists and flow collections.
    fn yaml() -> impl Strategy<Value = String> {
        let scalar = prop_oneof![
            prop::sample::select(
                &[
                    "yes",
                    "No",
                    "on",
                    "OFF",
                    "y",
                    "~",
                    "null",
                    "true",
                    "1e400",
                    "0x1F",
                    "-.inf",
                    ".nan",
                    "0o17",
                    "'q'",
                    "\"d\"",
                    "!!str yes",
                    "&a x",
                    "*a",
                    "[]",
                    "{}",
                    "|",
                    ">-",
                    "- ",
                    "? ",
                    ": ",
                    "#c",
                    "\"x\"#c",
                ][..]
            )
            .prop_map(str::to_string),
            any::<i64>().prop_map(|number| number.to_string()),
            any::<f64>().prop_map(|number| number.to_string()),
            "[ -~]{0,12}",
        ];
        let line = (
            0usize..4,
            prop::option::of(scalar.clone()),
            scalar,
            any::<bool>(),
        )
            .prop_map(|(indent, key, value, item)| {
                let key = key.map(|key| format!("{key}: ")).unwrap_or_default();
                let item = if item { "- " } else { "" };
                format!("{}{item}{key}{value}\n", "  ".repeat(indent))
            });
        prop::collection::vec(line, 0..10).prop_map(|lines| lines.concat())
    }

    proptest! {
        #[test]
        fn yaml_files_flatten_or_fail_naming_the_file(text in yaml()) {
            check("yaml", text.as_bytes())?;
        }

        #[test]
        fn json_files_flatten_or_fail_naming_the_file(
            document in arbitrary::json(&["a", "b", "0"]),
            cut in any::<prop::sample::Index>(),
        ) {
            let text = document.to_string();
            check("json", text.as_bytes())?;
            // Cut short: not JSON any more, or still JSON of another shape.
            let cut = cut.index(text.len() + 1);
            check("json", &text.as_bytes()[..cut])?;
        }

        #[test]
        fn toml_files_flatten_or_fail_naming_the_file(
            text in arbitrary::toml_text(&["a", "b", "a.b", "\"\"", "0"], &["", "[t]", "[[l]]"])
        ) {
            check("toml", text.as_bytes())?;
        }

        #[test]
        fn any_bytes_flatten_or_fail_naming_the_file(
            extension in prop::sample::select(&["yaml", "json", "toml"][..]),
            text in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            check(extension, &text)?;
        }
    }
}
