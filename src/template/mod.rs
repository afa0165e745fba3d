//! Templates: [Tera](https://keats.github.io/tera/) with confd's functions.
//!
//! Each resource's template is parsed once into a [`Renderer`] and rendered against a [`View`]
//! of the store snapshot whenever its keys change. Autoescaping is off (these are configuration
//! files, not HTML). confd's store functions (`get`, `gets`, `getv`, ...) read the view; its
//! helpers (`base`, `split`, `json`, `lookupIP`, ...) are registered beside Tera's own filters.
//! docs/templates.md lists them all with examples.
//!
//! Errors name the template file, line and column, and for a missing key the key.

mod arguments;
mod dns;
mod golang;
mod helpers;
mod library;
mod services;
mod store_functions;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tera::{Context, ErrorKind, Tera, Value};

pub use crate::dns::Resolver;
pub use library::Library;

use crate::store::{Snapshot, under_any};

/// What one render of one resource may read: the process's snapshot, narrowed to the
/// resource's keys and seen relative to its prefix.
#[derive(Clone, Debug)]
pub struct View {
    /// The store snapshot shared by every resource.
    pub snapshot: Arc<Snapshot>,
    /// The resource's full prefix (`""` for none). Template keys are relative to it, as in
    /// confd: with prefix `/production/app`, `getv(key="/db/host")` reads
    /// `/production/app/db/host`.
    pub prefix: String,
    /// Absolute key prefixes the resource declared; keys outside them are invisible.
    pub keys: Vec<String>,
    /// Results of store functions already computed over this same snapshot state.
    pub shared: Arc<SharedResults>,
}

/// Results of store functions that list keys (`gets`, `getvs`, `ls`, `lsdir`) over one state
/// of the snapshot, shared by every render from that state: twenty resources over the same
/// 10,000 backends build the list once, even when they render at the same moment on several
/// threads. A new one is needed whenever the snapshot changes.
#[derive(Debug, Default)]
pub struct SharedResults {
    results: Mutex<HashMap<SharedCall, Arc<SharedResult>>>,
}

/// One listing result, computed by the first render that asks for it; an error is kept as its
/// message.
type SharedResult = OnceLock<Result<Value, String>>;

/// One call of a listing function as seen from one resource: the same call from a resource
/// with another prefix or other keys sees other keys.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SharedCall {
    function: &'static str,
    argument: String,
    prefix: String,
    keys: Vec<String>,
}

impl SharedResults {
    /// The result of `function(argument)` for `view`, computed by `compute` unless a render
    /// from the same snapshot state asked already; a render asking while another computes it
    /// waits for that result.
    fn get_or_compute(
        &self,
        view: &View,
        function: &'static str,
        argument: &str,
        compute: impl FnOnce() -> tera::TeraResult<Value>,
    ) -> tera::TeraResult<Value> {
        let call = SharedCall {
            function,
            argument: argument.to_string(),
            prefix: view.prefix.clone(),
            keys: view.keys.clone(),
        };
        let cell = Arc::clone(
            self.results
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(call)
                .or_default(),
        );
        // Values are reference-counted: a clone is a cheap copy of the shared list.
        cell.get_or_init(|| compute().map_err(|e| e.to_string()))
            .clone()
            .map_err(tera::Error::message)
    }
}

impl View {
    /// The store key a template key names.
    fn absolute(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The template key of a store key under the prefix, always starting with `/` as confd's
    /// keys do.
    fn relative(&self, absolute: &str) -> String {
        let rest = absolute.get(self.prefix.len()..).unwrap_or(absolute);
        if rest.starts_with('/') {
            rest.to_string()
        } else {
            format!("/{rest}")
        }
    }

    /// True when the resource may read the store key.
    fn visible(&self, absolute: &str) -> bool {
        under_any(absolute, &self.keys)
    }

    /// The visible store entries whose key starts with `prefix + literal`, in key order, as
    /// (template key, value).
    fn entries_starting_with<'a>(
        &'a self,
        literal: &str,
    ) -> impl Iterator<Item = (String, &'a str)> + 'a {
        let start = self.absolute(literal);
        self.snapshot
            .entries
            .range(start.clone()..)
            .take_while(move |(key, _)| key.starts_with(&start))
            .filter(|(key, _)| self.visible(key))
            .map(|(key, value)| (self.relative(key), value.as_str()))
    }
}

thread_local! {
    /// The render running on this thread. Tera functions can reach per-render data only
    /// through the template context, and copying a whole snapshot into a context would cost
    /// more than the render itself; a render is synchronous, so the thread it runs on
    /// identifies it.
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// What the functions of the render running on a thread share with it.
struct Current {
    view: View,
    /// Set from outside when the render is to stop (its time limit passed).
    cancel: Arc<AtomicBool>,
    /// A function failed for a reason that may pass with no change of data (a DNS lookup
    /// that timed out), so the render is worth trying again.
    may_pass: bool,
}

/// Puts a render's state in place for its duration and restores the previous one after,
/// even if the render unwinds.
struct RenderScope {
    previous: Option<Current>,
}

impl RenderScope {
    fn enter(current: Current) -> RenderScope {
        RenderScope {
            previous: CURRENT.replace(Some(current)),
        }
    }

    /// True when a function of this render reported a failure that may pass.
    fn may_pass(&self) -> bool {
        CURRENT.with_borrow(|current| current.as_ref().is_some_and(|c| c.may_pass))
    }
}

impl Drop for RenderScope {
    fn drop(&mut self) {
        CURRENT.set(self.previous.take());
    }
}

/// A Tera being set up, with the arguments each function registered through
/// [`register_function`] takes, for checking the calls of a template when it is parsed.
struct Registry {
    tera: Tera,
    signatures: arguments::Signatures,
}

impl std::ops::Deref for Registry {
    type Target = Tera;

    fn deref(&self) -> &Tera {
        &self.tera
    }
}

impl std::ops::DerefMut for Registry {
    fn deref_mut(&mut self) -> &mut Tera {
        &mut self.tera
    }
}

/// Registers `function` as `name`, refusing keyword arguments other than those it `takes`:
/// a misspelt `default=` is an error naming the function and its arguments, not a default
/// silently left unused. A template is checked for such calls when it is parsed, too.
fn register_function<R: tera::FunctionResult>(
    registry: &mut Registry,
    name: &'static str,
    takes: &'static [&'static str],
    function: impl Fn(tera::Kwargs, &tera::State) -> R + Send + Sync + 'static,
) {
    registry.signatures.insert(name, takes);
    registry
        .tera
        .register_function(name, move |kwargs: tera::Kwargs, state: &tera::State| {
            let unknown = kwargs
                .iter()
                .filter_map(|(key, _)| key.as_str())
                .find(|key| !takes.contains(key));
            if let Some(unknown) = unknown {
                return Err(tera::Error::message(arguments::not_taken(
                    name, unknown, takes,
                )));
            }
            function(kwargs, state).into_result()
        });
}

/// Runs `read` on the view of the render in progress, unless that render was told to stop.
fn with_view<T>(read: impl FnOnce(&View) -> tera::TeraResult<T>) -> tera::TeraResult<T> {
    CURRENT.with_borrow(|current| match current {
        Some(current) if current.cancel.load(Ordering::Relaxed) => Err(stopped()),
        Some(current) => read(&current.view),
        None => Err(tera::Error::message(
            "store functions can only be called while a resource is rendered",
        )),
    })
}

/// Fails when the render in progress was told to stop: the functions that loops call check
/// it, so a runaway loop ends soon after its time limit instead of holding a thread.
fn checkpoint() -> tera::TeraResult<()> {
    let stop = CURRENT.with_borrow(|current| {
        current
            .as_ref()
            .is_some_and(|c| c.cancel.load(Ordering::Relaxed))
    });
    if stop { Err(stopped()) } else { Ok(()) }
}

fn stopped() -> tera::Error {
    tera::Error::message("the render was stopped")
}

/// Records that the render in progress failed for a reason that may pass by itself.
fn failure_may_pass() {
    CURRENT.with_borrow_mut(|current| {
        if let Some(current) = current {
            current.may_pass = true;
        }
    });
}

/// The limits of one render: how much it may write, and a flag another thread sets to stop
/// it.
#[derive(Clone, Debug)]
pub struct RenderBounds {
    /// The most bytes the output may have.
    pub max_size: u64,
    /// Set to stop the render at its next write or function call.
    pub cancel: Arc<AtomicBool>,
}

impl RenderBounds {
    /// No size limit and nobody to stop it.
    #[cfg(test)]
    pub fn unlimited() -> RenderBounds {
        RenderBounds {
            max_size: u64::MAX,
            cancel: Arc::default(),
        }
    }
}

/// Collects a render's output up to a size limit, and stops the render when it is cancelled:
/// a template that writes without end fails at the limit instead of exhausting memory.
struct BoundedOutput<'a> {
    bytes: Vec<u8>,
    bounds: &'a RenderBounds,
    exceeded: bool,
}

impl BoundedOutput<'_> {
    /// Appends `buffer` whole, or fails when the render was stopped or the limit is passed.
    #[inline]
    fn take(&mut self, buffer: &[u8]) -> std::io::Result<()> {
        if self.bounds.cancel.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the render was stopped"));
        }
        let size = self.bytes.len() as u64 + buffer.len() as u64;
        if size > self.bounds.max_size {
            self.exceeded = true;
            return Err(std::io::Error::other("the output is too large"));
        }
        self.bytes.extend_from_slice(buffer);
        Ok(())
    }
}

impl Write for BoundedOutput<'_> {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        self.take(buffer).map(|()| buffer.len())
    }

    // Tera writes a render as many small pieces with `write_all`; taking each whole, rather
    // than through the default loop over `write`, keeps this as cheap as writing to a `Vec`.
    #[inline]
    fn write_all(&mut self, buffer: &[u8]) -> std::io::Result<()> {
        self.take(buffer)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A template that cannot be read, parsed or rendered.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {message}")]
pub struct TemplateError {
    /// The template file, with `:line:column` where the fault has a place.
    pub location: String,
    /// What is wrong.
    pub message: String,
    /// The failure may pass without any change of data or template (a DNS lookup that could
    /// not be answered), so trying again later is worth it.
    pub may_pass: bool,
}

impl TemplateError {
    /// `error` of Tera as raised for the template `template`; `files` are the sources by Tera
    /// name, `root` the directory their relative names are under.
    fn from_tera(
        template: &str,
        error: &tera::Error,
        files: &BTreeMap<String, String>,
        root: Option<&Path>,
    ) -> TemplateError {
        let path = |name: &str| template_path(root, name);
        // Where `from` names the file `to` in an include, extends or import tag.
        let reference = |from: &str, to: &str| {
            let source = files.get(from)?;
            let (_, offset) = library::scan(source)
                .files
                .into_iter()
                .find(|(name, _)| name == to)?;
            Some(format!("{}:{}", path(from), line_column(source, offset)))
        };
        let plain = |location: String, message: String| TemplateError {
            location,
            message,
            may_pass: false,
        };
        match error.kind() {
            ErrorKind::SyntaxError(report) | ErrorKind::RenderingError(report) => {
                let span = report.span();
                let file = if report.filename().is_empty() {
                    template
                } else {
                    report.filename()
                };
                let source = files.get(file);
                let at = source.and_then(|source| source.get(span.range.clone()));
                let before = source.and_then(|source| source.get(..span.range.start));
                let mut message = explained(report.message(), at, before);
                if matches!(error.kind(), ErrorKind::SyntaxError(_))
                    && source.is_some_and(|source| in_go_action(source, span.range.start))
                {
                    if !message.ends_with('.') {
                        message.push('.');
                    }
                    message.push_str(
                        " This is confd's Go template syntax: `reconfd convert` translates \
                         confd templates to Tera's (docs/convert.md).",
                    );
                }
                plain(
                    format!("{}:{}:{}", path(file), span.start_line, span.start_col + 1),
                    message,
                )
            }
            ErrorKind::CircularInclude { tpl, include_chain } => {
                // The chain runs from the template rendered to the include closing the cycle.
                let closing = match include_chain.as_slice() {
                    [.., from, to] => reference(from, to),
                    _ => None,
                };
                let start = include_chain
                    .iter()
                    .position(|name| Some(name) == include_chain.last())
                    .unwrap_or(0);
                plain(
                    closing.unwrap_or_else(|| path(tpl)),
                    format!(
                        "the includes form a cycle: {}",
                        include_chain[start..].join(" -> ")
                    ),
                )
            }
            ErrorKind::MissingParent { current, parent } => plain(
                reference(current, parent).unwrap_or_else(|| path(current)),
                format!("`{parent}` is extended but is no file of the templates directory"),
            ),
            ErrorKind::Msg(message) => match located_reports(message, &path) {
                Some((location, message)) => plain(location, message),
                None => plain(path(template), message.clone()),
            },
            other => plain(path(template), other.to_string()),
        }
    }
}

/// Tera's reports of missing filters, functions, components and templates, each a block
/// `error: MESSAGE\n --> NAME:LINE:COLUMN ...`, as the first one's location and a message that
/// gives the others on lines of their own, each with its location.
fn located_reports(text: &str, path: &dyn Fn(&str) -> String) -> Option<(String, String)> {
    let mut found = text.split("\n\n").filter_map(|report| {
        let message = report.strip_prefix("error: ")?.lines().next()?;
        let at = report
            .lines()
            .find_map(|line| line.trim_start().strip_prefix("--> "))?;
        // The name may hold colons itself: line and column are the last two fields.
        let mut fields = at.rsplitn(3, ':');
        let (column, line, name) = (fields.next()?, fields.next()?, fields.next()?);
        Some((
            format!("{}:{line}:{column}", path(name)),
            explained(message, None, None),
        ))
    });
    let (location, mut message) = found.next()?;
    for (other_location, other_message) in found {
        message.push_str(&format!("\n{other_location}: {other_message}"));
    }
    Some((location, message))
}

/// True when the `{{ }}` around the byte `offset` of `source` is written as a Go template
/// action, as confd's are: `{{getv "/a"}}`, `{{.Value}}`, `{{$x := ...}}`, `{{range ...}}`,
/// `{{end}}`, where Tera writes `{{ getv(key="/a") }}` and `{% for %}`.
fn in_go_action(source: &str, offset: usize) -> bool {
    let Some(open) = source.get(..offset).and_then(|before| before.rfind("{{")) else {
        return false;
    };
    let action = source[open + 2..].trim_start_matches('-').trim_start();
    if action.starts_with(['.', '$']) {
        return true;
    }
    let word_end = action
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(action.len());
    let (word, rest) = action.split_at(word_end);
    if [
        "range", "end", "if", "else", "with", "define", "template", "block",
    ]
    .contains(&word)
    {
        return true;
    }
    // A function called Go's way, its arguments after a space: `getv "/a"`, `base .Key`.
    !word.is_empty()
        && rest.starts_with(' ')
        && rest.trim_start().starts_with(['"', '.', '$', '(', '`'])
}

/// `line:column` (both from 1) of the byte `offset` of `source`.
fn line_column(source: &str, offset: usize) -> String {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1;
    format!("{line}:{column}")
}

/// Tera's `message` for a fault at the source text `at` (with the text `before` it), with
/// what it names and, for the habits a confd template brings, how to write it in Tera.
fn explained(message: &str, at: Option<&str>, before: Option<&str>) -> String {
    match (message, at) {
        ("Unknown tag", Some(tag)) => format!(
            "unknown tag `{tag}` (tags are Tera's: if, for, set, include, extends, block, ...; confd's \
             functions are called inside {{{{ }}}})"
        ),
        // A value or a bare name where a call's argument name belongs: `getv("/a")`,
        // `seq(1, 3)`, `getv(k)`.
        (message, _)
            if message.starts_with("Found ")
                && (message.contains("but expected identifier")
                    || message.contains("but expected =")) =>
        {
            match before.and_then(called_name) {
                Some(called) => format!(
                    "{message} Arguments are passed by name: `{called}(name=value, ...)` with \
                     the names docs/templates.md gives, as `getv(key=\"/a/b\")`, not \
                     `getv(\"/a/b\")`."
                ),
                None => message.to_string(),
            }
        }
        (message, _) => message.to_string(),
    }
}

/// The function or filter whose argument list `before` ends in: `split` for
/// `{{ x | split(`, `getv` for `{{ getv(k`.
fn called_name(before: &str) -> Option<&str> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let head = before
        .trim_end()
        .trim_end_matches(is_name)
        .trim_end()
        .strip_suffix('(')?
        .trim_end();
    let start = head
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |at| at + 1);
    Some(&head[start..]).filter(|name| !name.is_empty())
}

/// The path, for messages, of the template Tera knows as `name`: under `root` when relative.
fn template_path(root: Option<&Path>, name: &str) -> String {
    match root {
        Some(root) if !Path::new(name).is_absolute() => root.join(name).display().to_string(),
        _ => name.to_string(),
    }
}

/// What a render that panicked fails with, after the template's path.
pub(crate) const PANICKED: &str = "rendering failed unexpectedly (it panicked); please report this";

/// Fails naming each call in `files` (sources by Tera name, under `root`) that gives a function
/// an argument it does not take, one per line, each with its place.
fn misnamed_arguments(
    files: &BTreeMap<String, String>,
    signatures: &arguments::Signatures,
    root: Option<&Path>,
) -> Result<(), TemplateError> {
    let mut faults = files.iter().flat_map(|(name, source)| {
        let path = template_path(root, name);
        arguments::misnamed(source, signatures)
            .into_iter()
            .map(move |fault| {
                (
                    format!("{path}:{}", line_column(source, fault.offset)),
                    fault.message,
                )
            })
    });
    let Some((location, mut message)) = faults.next() else {
        return Ok(());
    };
    for (location, more) in faults {
        message.push_str(&format!("\n{location}: {more}"));
    }
    Err(TemplateError {
        location,
        message,
        may_pass: false,
    })
}

/// One template, parsed once with the shared parts it uses, with confd's functions
/// registered.
pub struct Renderer {
    tera: Tera,
    /// The template's name in `tera`: its path relative to `root`, or its own path.
    name: String,
    /// The templates directory, which errors put in front of relative names.
    root: Option<PathBuf>,
}

impl Renderer {
    /// Reads and parses the template at `path` with the parts of its directory, resolving
    /// names with the system's DNS configuration.
    #[cfg(test)]
    pub fn from_file(path: &Path) -> Result<Renderer, TemplateError> {
        Library::read(path.parent().unwrap_or(Path::new("."))).renderer(path, Resolver::System)
    }

    /// Parses `source` as the template called `name` (the name errors report).
    #[cfg(test)]
    pub fn from_source(
        name: &str,
        source: &str,
        resolver: Resolver,
    ) -> Result<Renderer, TemplateError> {
        let files = BTreeMap::from([(name.to_string(), source.to_string())]);
        Renderer::build(None, name, &files, resolver)
    }

    /// Parses the template `name` among `files` (Tera names, relative to `root`, and their
    /// sources), which hold it and the parts it uses.
    fn from_parts(
        root: &Path,
        name: &str,
        files: BTreeMap<String, String>,
        resolver: Resolver,
    ) -> Result<Renderer, TemplateError> {
        Renderer::build(Some(root), name, &files, resolver)
    }

    fn build(
        root: Option<&Path>,
        name: &str,
        files: &BTreeMap<String, String>,
        resolver: Resolver,
    ) -> Result<Renderer, TemplateError> {
        let mut registry = Registry {
            tera: Tera::new(),
            signatures: arguments::Signatures::new(),
        };
        registry.autoescape_on(Vec::<&'static str>::new());
        store_functions::register(&mut registry);
        services::register(&mut registry);
        helpers::register(&mut registry);
        golang::register(&mut registry);
        dns::register(&mut registry, resolver);
        registry
            .add_raw_templates(files)
            .map_err(|e| TemplateError::from_tera(name, &e, files, root))?;
        misnamed_arguments(files, &registry.signatures, root)?;
        Ok(Renderer {
            tera: registry.tera,
            name: name.to_string(),
            root: root.map(Path::to_path_buf),
        })
    }

    /// The template's path, for messages.
    fn path(&self) -> String {
        template_path(self.root.as_deref(), &self.name)
    }

    /// Renders the template against `view`, with no limit.
    #[cfg(test)]
    pub fn render(&self, view: View) -> Result<String, TemplateError> {
        self.render_bounded(view, &RenderBounds::unlimited())
    }

    /// Renders the template against `view` within `bounds`: past the size limit, or once
    /// cancelled, the render fails.
    pub fn render_bounded(
        &self,
        view: View,
        bounds: &RenderBounds,
    ) -> Result<String, TemplateError> {
        let scope = RenderScope::enter(Current {
            view,
            cancel: Arc::clone(&bounds.cancel),
            may_pass: false,
        });
        let mut output = BoundedOutput {
            bytes: Vec::new(),
            bounds,
            exceeded: false,
        };
        let rendered = self
            .tera
            .render_to(&self.name, &Context::new(), &mut output);
        if output.exceeded {
            return Err(TemplateError {
                location: self.path(),
                message: format!(
                    "the output grew past {}, the limit (`render_max_size`); the destination \
                     is left as it is",
                    bytesize::ByteSize::b(bounds.max_size).display().iec()
                ),
                may_pass: false,
            });
        }
        if let Err(e) = rendered {
            let mut error =
                TemplateError::from_tera(&self.name, &e, &BTreeMap::new(), self.root.as_deref());
            error.may_pass = scope.may_pass();
            return Err(error);
        }
        // Tera writes whole UTF-8 strings only.
        String::from_utf8(output.bytes).map_err(|e| TemplateError {
            location: self.path(),
            message: format!("the output is not UTF-8: {e}"),
            may_pass: false,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A view over `entries` with the given prefix and resource keys.
    pub(super) fn view(entries: &[(&str, &str)], prefix: &str, keys: &[&str]) -> View {
        View {
            snapshot: Arc::new(Snapshot {
                entries: entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Snapshot::default()
            }),
            prefix: prefix.to_string(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            shared: Arc::default(),
        }
    }

    /// Renders `source` against a view of `entries` with no prefix and every key visible.
    pub(crate) fn render(source: &str, entries: &[(&str, &str)]) -> Result<String, TemplateError> {
        Renderer::from_source("test.tmpl", source, Resolver::System)?.render(view(
            entries,
            "",
            &["/"],
        ))
    }

    #[test]
    fn autoescape_is_off_for_every_template() {
        let out = render(
            "{{ getv(key=\"/html\") }}",
            &[("/html", "<a href=\"x\">&</a>")],
        )
        .expect("renders");
        assert_eq!(out, "<a href=\"x\">&</a>");
    }

    #[test]
    fn whitespace_control_works() {
        let out = render(
            "a\n{%- for kv in gets(key=\"/s/*\") %}\n{{ kv.value }}{% endfor %}",
            &[("/s/1", "x"), ("/s/2", "y")],
        )
        .expect("renders");
        assert_eq!(out, "a\nx\ny");
    }

    #[test]
    fn syntax_error_names_file_line_and_column() {
        let err = Renderer::from_source("t/app.tmpl", "ok\n{{ kv.key \n", Resolver::System)
            .err()
            .expect("syntax error");
        assert!(err.location.starts_with("t/app.tmpl:2:"), "{err}");
    }

    #[test]
    fn an_unknown_tag_is_named() {
        let err = Renderer::from_source("t.tmpl", "a\n{% range $x %}\n", Resolver::System)
            .err()
            .expect("unknown tag");
        assert!(
            err.to_string()
                .starts_with("t.tmpl:2:4: unknown tag `range`"),
            "{err}"
        );
    }

    #[test]
    fn a_positional_argument_is_explained_with_the_function_it_was_given_to() {
        for (source, called) in [
            ("{{ getv(\"/a\") }}", "getv"),
            ("{{ seq(1, 3) }}", "seq"),
            ("{{ getv(true) }}", "getv"),
            ("{% set k = \"/x\" %}{{ getv(k) }}", "getv"),
            ("{{ \"a,b\" | split(\",\") }}", "split"),
            ("{{ \"a\" | replace( \"a\", \"b\") }}", "replace"),
        ] {
            let err = Renderer::from_source("t.tmpl", source, Resolver::System)
                .err()
                .unwrap_or_else(|| panic!("{source} parsed"));
            assert!(
                err.to_string()
                    .contains(&format!("passed by name: `{called}(name=value, ...)`")),
                "{source}: {err}"
            );
        }
    }

    #[test]
    fn a_confd_template_gets_a_hint_to_convert_it() {
        for go in [
            "{{getv \"/app/a\"}}",
            "{{.Key}}",
            "{{range gets \"/app/*\"}}x{{end}}",
            "{{if exists \"/a\"}}y{{end}}",
            "a\n{{toUpper (getv \"/app/a\")}}",
        ] {
            let err = Renderer::from_source("t.tmpl", go, Resolver::System)
                .err()
                .unwrap_or_else(|| panic!("{go} parsed"));
            assert!(err.to_string().contains("`reconfd convert`"), "{go}: {err}");
        }
        let err = Renderer::from_source("t.tmpl", "{{ getv(key=\"/a\") + }}", Resolver::System)
            .err()
            .expect("a Tera syntax error");
        assert!(!err.to_string().contains("reconfd convert"), "{err}");
    }

    #[test]
    fn unreadable_template_names_the_path() {
        let err = Renderer::from_file(Path::new("/nonexistent/x.tmpl"))
            .err()
            .expect("missing file");
        assert!(
            err.to_string().starts_with("/nonexistent/x.tmpl: "),
            "{err}"
        );
    }

    #[test]
    fn render_error_names_file_line_and_column() {
        let renderer = Renderer::from_source(
            "app.tmpl",
            "a\nb {{ getv(key=\"/nope\") }}\n",
            Resolver::System,
        )
        .expect("parses");
        let err = renderer.render(view(&[], "", &["/"])).expect_err("missing");
        assert_eq!(err.location, "app.tmpl:2:6", "{err}");
        assert!(err.message.contains("/nope"), "{err}");
    }

    #[test]
    fn the_view_ends_with_the_render() {
        let renderer =
            Renderer::from_source("a", "{{ getv(key=\"/k\") }}", Resolver::System).expect("parses");
        renderer
            .render(view(&[("/k", "v")], "", &["/"]))
            .expect("renders");
        assert!(CURRENT.with_borrow(Option::is_none));
    }

    /// The rows of the confd-to-reconfd table in docs/templates.md render as documented.
    #[test]
    fn documented_translations_of_confd_templates_render() {
        let entries = [
            ("/db/host", "db1"),
            ("/config", "{\"name\": \"shop\"}"),
            ("/hosts/a", "h2"),
            ("/hosts/b", "h1"),
            ("/pair", "left:right"),
            ("/services/web/port", "80"),
            ("/services/api/port", "81"),
            ("/apps/shop/port", "8080"),
            ("/n", "41"),
        ];
        for (source, expected) in [
            ("{{ getv(key=\"/db/host\") }}", "db1"),
            ("{{ getv(key=\"/db/port\", default=\"5432\") }}", "5432"),
            (
                "{% set kv = get(key=\"/db/host\") %}{{ kv.key }}={{ kv.value }}",
                "/db/host=db1",
            ),
            (
                "{% for name in ls(key=\"/services\") %}{{ loop.index0 }} {{ name }};{% endfor %}",
                "0 api;1 web;",
            ),
            (
                "{% for app in lsdir(key=\"/apps\") %}{{ getv(key=\"/apps/\" ~ app ~ \"/port\") }}{% endfor %}",
                "8080",
            ),
            (
                "{% set data = getv(key=\"/config\") | json %}{{ data.name }}",
                "shop",
            ),
            ("{{ getvs(key=\"/hosts/*\") | join(sep=\",\") }}", "h1,h2"),
            ("{{ (getv(key=\"/pair\") | split(pat=\":\"))[0] }}", "left"),
            ("{{ getv(key=\"/n\") | atoi + 1 }}", "42"),
            ("{{ add(a=1, b=2) }} {{ 1 + 2 }}", "3 3"),
            (
                "{% for kv in gets(key=\"/services/**\") %}{{ kv.value }} {% endfor %}",
                "81 80 ",
            ),
            ("{# comment #}x", "x"),
        ] {
            assert_eq!(
                render(source, &entries).expect(source),
                expected,
                "{source}"
            );
        }
    }
}
