//! The plan: which resources run, grouped by the store they read, for one set of settings.
//!
//! A plan is made at start and again on every SIGHUP. Everything is loaded and checked before
//! anything runs; a SIGHUP whose settings, resources or templates are unusable leaves the
//! running plan in place. Store clients whose settings did not change are handed over to the
//! new plan, so their watches resume where they stopped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::command::CommandEnv;
use crate::controller::{
    Controller, DEFAULT_RENDER_MAX_SIZE, DEFAULT_RENDER_TIMEOUT, Prepared, RenderLimits,
    SyncOptions,
};
use crate::reconcile::Options;
use crate::resource::{self, Resource, ResourceError};
use crate::settings::{RunMode, Settings};
use crate::stage;
use crate::status::Status;
use crate::store::backend::{self, Backend};
use crate::template::{Library, Renderer, Resolver};

/// What a confdir's resource files and templates are on disk: each file's path, size,
/// modification time and inode, so that an edit, a new file, a removed one or one replaced by
/// a rename shows as a change. Compared at every `--interval`, as confd reads conf.d and the
/// templates again for each run.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ConfdirState(Vec<(PathBuf, u64, i64, i64, u64)>);

impl ConfdirState {
    /// The state of `confdir`'s `conf.d/*.toml` and of every file under `templates/`;
    /// unreadable entries are left out (loading them says what is wrong).
    pub(crate) fn read(confdir: &Path) -> ConfdirState {
        use std::os::unix::fs::MetadataExt;
        let resource_files = crate::resource::resource_files(&confdir.join("conf.d"))
            .map(|(files, _)| files)
            .unwrap_or_default();
        let templates = walkdir::WalkDir::new(confdir.join("templates"))
            .follow_links(true)
            .into_iter()
            .filter_map(Result::ok)
            .map(walkdir::DirEntry::into_path);
        let mut files: Vec<_> = resource_files
            .into_iter()
            .chain(templates)
            .filter_map(|path| {
                // Through symlinks, as loading reads them; a link that leads nowhere is a
                // resource file too (loading reports it), so its coming and going is a change.
                let metadata = std::fs::metadata(&path)
                    .or_else(|_| std::fs::symlink_metadata(&path))
                    .ok()?;
                (metadata.is_file() || metadata.is_symlink()).then(|| {
                    (
                        path.clone(),
                        metadata.len(),
                        metadata.mtime(),
                        metadata.mtime_nsec(),
                        metadata.ino(),
                    )
                })
            })
            .collect();
        files.sort();
        ConfdirState(files)
    }

    /// A file that had content in `before` and is empty now: most likely caught between an
    /// editor's or a shell redirect's truncation and its write.
    pub(crate) fn emptied_since(&self, before: &ConfdirState) -> Option<&Path> {
        self.0.iter().find_map(|(path, size, ..)| {
            let had_content = before
                .0
                .iter()
                .any(|(old, old_size, ..)| old == path && *old_size > 0);
            (*size == 0 && had_content).then_some(path.as_path())
        })
    }
}

/// Mode of a file rendered from a store of secrets whose resource sets none.
const SECRET_MODE: u32 = 0o600;

/// Why a plan could not be made: the settings are unusable (exit status 2), or a store
/// client could not be built.
#[derive(Debug)]
pub(crate) enum PlanError {
    /// The settings, the confdir or a store's settings cannot work; already logged.
    Unusable,
}

/// The controllers to run for one set of settings, and how many resources could not be
/// loaded.
pub(crate) struct Plan {
    /// One controller per distinct store.
    pub(crate) controllers: Vec<Controller>,
    /// Resource files that could not be loaded (logged).
    pub(crate) failures: usize,
    /// The credentials commands get after all, which the exec mode's service gets too.
    pub(crate) command_env: CommandEnv,
}

impl Plan {
    /// Loads the resources and templates of `settings` and groups them by store. Controllers
    /// of `previous` whose store settings are unchanged hand over their store client (and
    /// with it where their watches stopped) and, when they read the same prefixes, their
    /// snapshot.
    pub(crate) fn build(
        settings: &Settings,
        mut previous: Vec<Controller>,
        status: &Status,
    ) -> Result<Plan, PlanError> {
        let loaded = match resource::load_all(&settings.confdir, &settings.prefix) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!("{e}");
                return Err(PlanError::Unusable);
            }
        };
        let (prepared, mut unloaded) = prepare_resources(loaded, settings);
        if !settings.noop {
            // Nothing is being staged now (at start, or on a SIGHUP once the running
            // controllers have stopped), so a stage file found beside a destination was left
            // by a run that was killed.
            for member in &prepared {
                stage::remove_leftovers(&member.resource.dest);
            }
        }
        if prepared.is_empty() && unloaded.is_empty() {
            tracing::warn!(
                "no template resources in {}",
                settings.confdir.join("conf.d").display()
            );
        }
        let options = Options {
            noop: settings.noop,
            sync_only: settings.sync_only,
            keep_stage_file: settings.keep_stage_file,
            command_env: CommandEnv::passing(&settings.command_env),
        };
        // The global store is opened even if no resource reads it, so that unusable settings
        // are reported the same way whatever the confdir holds.
        let mut global_store = match settings.backend.as_ref().map(backend::open).transpose() {
            Ok(store) => store,
            Err(message) => {
                tracing::error!("{message}");
                return Err(PlanError::Unusable);
            }
        };
        // A file the running set swapped in but could not reload is still owed its reload,
        // whichever controller writes it now (a SIGHUP is how a fixed reload_cmd arrives).
        let reloads_owed: BTreeSet<PathBuf> = previous
            .iter()
            .flat_map(Controller::reloads_owed)
            .map(Path::to_path_buf)
            .collect();
        let mut controllers = Vec::new();
        for (backend, members) in by_store(prepared, settings.backend.as_ref()) {
            let Some(backend) = backend else {
                for member in &members {
                    tracing::error!(
                        "{}: no store to read from: give --backend (and --file for the file \
                         store) or a [backend] table",
                        member.resource.file.display()
                    );
                }
                return Err(PlanError::Unusable);
            };
            let members: Vec<Arc<Prepared>> = members
                .into_iter()
                .map(|mut member| {
                    apply_settings(&mut member.resource, Some(&backend), settings);
                    Arc::new(member)
                })
                .collect();
            let sync = SyncOptions {
                reconcile: options,
                interval: settings.interval,
                polling: settings.mode == RunMode::Poll,
            };
            if let Some(index) = previous
                .iter()
                .position(|controller| controller.backend() == &backend)
            {
                let old = previous.swap_remove(index);
                let mut next = old.hand_over(backend, members, sync, status.clone());
                next.owe_reloads(&reloads_owed);
                controllers.push(next);
                continue;
            }
            let opened = match global_store.take_if(|_| Some(&backend) == settings.backend.as_ref())
            {
                Some(store) => Ok(store),
                None => backend::open(&backend),
            };
            match opened {
                Ok(store) => {
                    let mut next = Controller::new(store, backend, members, sync, status.clone());
                    next.owe_reloads(&reloads_owed);
                    controllers.push(next);
                }
                Err(message) => {
                    // Only the resources with this [backend] table are lost.
                    for member in &members {
                        let file = member.resource.file.display().to_string();
                        tracing::error!("{file}: [backend]: {message}");
                        unloaded.push((file, format!("[backend]: {message}")));
                    }
                }
            }
        }
        status.set_resources(controllers.iter().flat_map(|controller| {
            controller.resources().map(|resource| {
                (
                    resource.file.as_path(),
                    resource.dest.as_path(),
                    controller.instance(),
                )
            })
        }));
        let failures = unloaded.len();
        status.set_unloaded(unloaded);
        Ok(Plan {
            controllers,
            failures,
            command_env: options.command_env,
        })
    }
}

/// The settings as the command line, environment and settings file give them now, if they
/// and every resource and template they name are usable; otherwise why not. Nothing is
/// started: this is the check a SIGHUP passes before the running plan is replaced.
pub(crate) fn validate(current: &Settings) -> Result<Settings, String> {
    let settings = Settings::from_command_line().map_err(|e| e.to_string())?;
    if settings.mode == RunMode::Onetime {
        return Err("--onetime cannot be switched on in a running daemon".to_string());
    }
    if settings.confdir != current.confdir {
        tracing::info!("confdir is now {}", settings.confdir.display());
    }
    let loaded =
        resource::load_all(&settings.confdir, &settings.prefix).map_err(|e| e.to_string())?;
    let (prepared, unloaded) = prepare_resources(loaded, &settings);
    let failures = unloaded.len();
    if failures > 0 {
        let files: Vec<&str> = unloaded.iter().map(|(file, _)| file.as_str()).collect();
        return Err(format!(
            "{failures} {} unusable ({}; logged above)",
            plural(
                failures,
                "resource or template is",
                "resources or templates are"
            ),
            files.join(", ")
        ));
    }
    for backend in prepared
        .iter()
        .filter_map(|member| member.resource.backend.as_ref())
        .chain(settings.backend.as_ref())
    {
        backend::open(backend)?;
    }
    Ok(settings)
}

/// Gives `resource`, which reads `store`, what the settings give every resource: the secrecy
/// of its store or of `--secret`, and `--wait`, `--min-keys` and `--rollback` where it sets
/// none of its own.
pub(crate) fn apply_settings(
    resource: &mut Resource,
    store: Option<&Backend>,
    settings: &Settings,
) {
    resource.secret |= store.is_some_and(Backend::holds_secrets)
        || (resource.backend.is_none() && settings.secret);
    // Files rendered from secrets are private unless their resource says otherwise.
    if resource.secret {
        resource.mode.get_or_insert(SECRET_MODE);
    }
    resource.wait = resource.wait.or(settings.wait);
    resource.min_keys = resource.min_keys.or(settings.min_keys);
    resource.rollback |= settings.rollback;
}

/// `one` for a count of 1, `many` otherwise.
pub(crate) fn plural<'a>(count: usize, one: &'a str, many: &'a str) -> &'a str {
    if count == 1 { one } else { many }
}

/// The resources grouped by the store they read from (their `[backend]` table, or the global
/// store), in the order each store first appears: each group shares one store client, one
/// snapshot and one watch. `None` is the group of resources with no store at all.
fn by_store(
    prepared: Vec<Prepared>,
    global: Option<&Backend>,
) -> Vec<(Option<Backend>, Vec<Prepared>)> {
    let mut groups: Vec<(Option<Backend>, Vec<Prepared>)> = Vec::new();
    for member in prepared {
        let backend = member.resource.backend.clone().or_else(|| global.cloned());
        match groups.iter_mut().find(|(existing, _)| *existing == backend) {
            Some((_, members)) => members.push(member),
            None => groups.push((backend, vec![member])),
        }
    }
    groups
}

/// Loads every resource and parses its template once, with the shared parts it uses. Bad
/// resource files are logged and returned as (file, why); the others go on.
fn prepare_resources(
    loaded: Vec<Result<Vec<Resource>, ResourceError>>,
    settings: &Settings,
) -> (Vec<Prepared>, Vec<(String, String)>) {
    let library = Library::read(&settings.confdir.join("templates"));
    let mut prepared = Vec::new();
    let mut unloaded = Vec::new();
    for loaded in loaded {
        let resources = match loaded {
            Ok(resources) => resources,
            Err(e) => {
                tracing::error!("{e}");
                unloaded.push((e.file.clone(), e.to_string()));
                continue;
            }
        };
        // The templates of one file go in together or not at all.
        let renderers: Result<Vec<Renderer>, String> = resources
            .iter()
            .map(|resource| {
                library
                    .renderer(&resource.src, Resolver::System)
                    .map_err(|e| format!("{}: {e}", resource.file.display()))
            })
            .collect();
        match renderers {
            Ok(renderers) => prepared.extend(resources.into_iter().zip(renderers).map(
                |(resource, renderer)| Prepared {
                    limits: render_limits(&resource, settings),
                    resource,
                    renderer,
                },
            )),
            Err(message) => {
                tracing::error!("{message}");
                if let Some(resource) = resources.first() {
                    unloaded.push((resource.file.display().to_string(), message));
                }
            }
        }
    }
    (prepared, unloaded)
}

/// The render limits of `resource`: its own, or the settings', or the defaults.
pub(crate) fn render_limits(resource: &Resource, settings: &Settings) -> RenderLimits {
    RenderLimits {
        timeout: resource
            .render_timeout
            .or(settings.render_timeout)
            .unwrap_or(DEFAULT_RENDER_TIMEOUT),
        max_size: resource
            .render_max_size
            .or(settings.render_max_size)
            .unwrap_or(DEFAULT_RENDER_MAX_SIZE),
    }
}

/// The fewest prefixes that cover all of `keys`: a key under another one adds nothing to a
/// fetch or a watch.
pub(crate) fn covering_prefixes<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<String> {
    let sorted: BTreeSet<&String> = keys.collect();
    let mut covering: Vec<String> = Vec::new();
    for key in sorted {
        if !covering
            .iter()
            .any(|prefix| key.starts_with(prefix.as_str()))
        {
            covering.push(key.clone());
        }
    }
    covering
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_prefixes_drops_nested_ones() {
        let keys = [
            "/proxy/frontend".to_string(),
            "/proxy".to_string(),
            "/db".to_string(),
            "/proxy/backend".to_string(),
        ];
        assert_eq!(covering_prefixes(keys.iter()), ["/db", "/proxy"]);
    }
}
