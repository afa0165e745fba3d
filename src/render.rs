//! `reconfd render RESOURCE`: one resource's rendered content on standard output, from a data
//! file or from one read of its store, with no destination touched and no command run; and the
//! one-off render that `reconfd check --data` shares with it.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};

use crate::controller::{RenderLimits, too_few_keys};
use crate::plan::{apply_settings, covering_prefixes, plural, render_limits};
use crate::resource::{self, Resource};
use crate::secrets::{self, GroupSecrets};
use crate::settings::Settings;
use crate::store::backend::{self, Backend};
use crate::store::file::FileStore;
use crate::store::{Snapshot, Store};
use crate::template::{Library, RenderBounds, Renderer, Resolver, TemplateError, View};

/// Prints the rendered content of `name` (a conf.d file name, with or without `.toml`, or a
/// path), from the data file `data` or else from the store it reads. Exit status 1 when it
/// cannot be loaded or rendered, 2 when there is nothing to read its keys from or the data
/// file is unusable.
pub async fn run(settings: &Settings, name: &Path, data: Option<&Path>) -> ExitCode {
    let fail = |message: String| {
        eprintln!("reconfd: {}", secrets::mask(&message));
        ExitCode::FAILURE
    };
    let file = resource_file(&settings.confdir, name);
    let templates = settings.confdir.join("templates");
    let resources = match resource::load(&file, &templates, &settings.prefix) {
        Ok(resources) => resources,
        Err(e) => return fail(e.to_string()),
    };
    let library = Library::read(&templates);
    let mut output = String::new();
    // Masking what is printed about each resource, until the output is written.
    let mut published = Vec::new();
    for resource in &resources {
        let resource = &as_synced(resource.clone(), settings);
        let renderer = match library.renderer(&resource.src, Resolver::System) {
            Ok(renderer) => renderer,
            Err(e) => return fail(format!("{}: {e}", resource.file.display())),
        };
        let snapshot = match data {
            // An unusable data file is the run's, as for `check --data`: exit status 2.
            Some(data) => match read_data(data).await {
                Ok(snapshot) => Ok(snapshot),
                Err(message) => {
                    eprintln!("reconfd: {}", secrets::mask(&message));
                    return ExitCode::from(2);
                }
            },
            None => match resource.backend.as_ref().or(settings.backend.as_ref()) {
                Some(store) => read_store(store, resource).await,
                None => {
                    eprintln!(
                        "reconfd: {}: no store to read from: give --data FILE, or --backend \
                         (and --file for the file store), or a [backend] table",
                        resource.file.display()
                    );
                    return ExitCode::from(2);
                }
            },
        };
        let snapshot = match snapshot {
            Ok(snapshot) => snapshot,
            Err(message) => return fail(format!("{}: {message}", resource.file.display())),
        };
        published.push(secrets_of(resource, &snapshot, settings));
        match render_as_synced(
            &renderer,
            resource,
            snapshot,
            render_limits(resource, settings),
        ) {
            Ok(content) => output.push_str(&content),
            Err(message) => return fail(format!("{}: {message}", resource.file.display())),
        }
    }
    // Printed only once every template of the file rendered, so a failure prints no part.
    crate::stdout::print(&output);
    ExitCode::SUCCESS
}

/// `resource` as a sync takes it, with what a plan gives every resource from the settings
/// (its secrecy and `--min-keys` matter here).
pub(crate) fn as_synced(mut resource: Resource, settings: &Settings) -> Resource {
    let store = resource
        .backend
        .clone()
        .or_else(|| settings.backend.clone());
    apply_settings(&mut resource, store.as_ref(), settings);
    resource
}

/// Publishes for masking, as the daemon does, the credentials of the store of `resource` and,
/// for a secret resource, the values it reads from `snapshot`; they are masked in everything
/// printed while the returned value lives.
pub(crate) fn secrets_of(
    resource: &Resource,
    snapshot: &Snapshot,
    settings: &Settings,
) -> GroupSecrets {
    let store = resource.backend.as_ref().or(settings.backend.as_ref());
    let mut secrets = GroupSecrets::new(store.map(Backend::credentials).unwrap_or_default());
    if resource.secret {
        let values: Vec<&str> = resource
            .keys
            .iter()
            .flat_map(|prefix| snapshot.starting_with(prefix))
            .map(|(_, value)| value.as_str())
            .collect();
        secrets.update(&values);
    }
    secrets
}

/// The resource file `name` stands for: `NAME` or `NAME.toml` under `conf.d` (in a
/// subdirectory too: `apps/web` is `conf.d/apps/web.toml`, and a bare `web` is found in any
/// subdirectory when it is the only one of that name), else the path itself.
fn resource_file(confdir: &Path, name: &Path) -> PathBuf {
    let dir = confdir.join("conf.d");
    let with_extension = |path: PathBuf| {
        let mut with = path.into_os_string();
        with.push(".toml");
        PathBuf::from(with)
    };
    if name.is_relative() {
        for candidate in [dir.join(name), with_extension(dir.join(name))] {
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    if name.is_file() {
        return name.to_path_buf();
    }
    if name.components().count() == 1 {
        let wanted = with_extension(name.to_path_buf());
        let found: Vec<PathBuf> = resource::resource_files(&dir)
            .map(|(files, _)| files)
            .unwrap_or_default()
            .into_iter()
            .filter(|file| file.file_name() == Some(wanted.as_os_str()))
            .collect();
        if let [only] = found.as_slice() {
            return only.clone();
        }
        return with_extension(dir.join(name));
    }
    name.to_path_buf()
}

/// Every key of the data file at `path`, read as the file store reads it.
pub(crate) async fn read_data(path: &Path) -> Result<Arc<Snapshot>, String> {
    let store = FileStore::new(vec![path.to_path_buf()], None).map_err(|e| e.to_string())?;
    let snapshot = store
        .fetch(&["/".to_string()])
        .await
        .map_err(|e| format!("--data: {e}"))?;
    Ok(Arc::new(snapshot))
}

/// One read of the keys of `resource` from `store`.
async fn read_store(
    store: &backend::Backend,
    resource: &Resource,
) -> Result<Arc<Snapshot>, String> {
    let prefixes = covering_prefixes(resource.keys.iter());
    if prefixes.is_empty() {
        return Ok(Arc::default());
    }
    let store = backend::open(store)?;
    let snapshot = store
        .fetch(&prefixes)
        .await
        .map_err(|e| format!("{} store: {e}", store.name()))?;
    Ok(Arc::new(snapshot))
}

/// Renders `resource` from `snapshot` as a sync would, short of writing it: refused when the
/// snapshot holds fewer keys than its `min_keys` (a sync would leave the destination as it
/// is), and when the output is not in its `output_format`. The error does not name the
/// resource file; its callers do.
pub(crate) fn render_as_synced(
    renderer: &Renderer,
    resource: &Resource,
    snapshot: Arc<Snapshot>,
    limits: RenderLimits,
) -> Result<String, String> {
    if let Some(too_few) = too_few_keys(resource, &snapshot) {
        return Err(format!(
            "{} {} under {}, fewer than min_keys = {}: a sync would leave {} as it is",
            too_few.found,
            plural(too_few.found, "key", "keys"),
            resource.keys.join(", "),
            too_few.min,
            resource.dest.display()
        ));
    }
    let content = render_once(renderer, resource, snapshot, limits).map_err(|e| e.to_string())?;
    if let Some(format) = resource.output_format {
        format.validate(&content).map_err(|message| {
            format!(
                "{}: the rendered output is not valid {format}: {message}",
                resource.src.display()
            )
        })?;
    }
    Ok(content)
}

/// Renders `resource` from `snapshot` within `limits`, on a thread of its own so that a
/// template past its time limit is told to stop.
pub(crate) fn render_once(
    renderer: &Renderer,
    resource: &Resource,
    snapshot: Arc<Snapshot>,
    limits: RenderLimits,
) -> Result<String, TemplateError> {
    let view = View {
        snapshot,
        prefix: resource.prefix.clone(),
        keys: resource.keys.clone(),
        shared: Arc::default(),
    };
    let bounds = RenderBounds {
        max_size: limits.max_size,
        cancel: Arc::default(),
    };
    std::thread::scope(|scope| {
        let (done, result) = mpsc::channel();
        let bounds_of_render = &bounds;
        scope.spawn(move || {
            // A panic (logged by the hook) is this render's failure, not the command's.
            let rendered = std::panic::catch_unwind(AssertUnwindSafe(|| {
                renderer.render_bounded(view, bounds_of_render)
            }))
            .unwrap_or_else(|_| {
                Err(TemplateError {
                    location: resource.src.display().to_string(),
                    message: crate::template::PANICKED.to_string(),
                    may_pass: false,
                })
            });
            // The receiver is gone only after a timeout, which has its own answer.
            let _ = done.send(rendered);
        });
        result.recv_timeout(limits.timeout).unwrap_or_else(|_| {
            bounds.cancel.store(true, Ordering::Relaxed);
            Err(TemplateError {
                location: resource.src.display().to_string(),
                message: format!(
                    "the render took longer than {}, the limit (`render_timeout`)",
                    humantime::format_duration(limits.timeout)
                ),
                may_pass: false,
            })
        })
    })
}
