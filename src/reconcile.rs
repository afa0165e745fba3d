//! Bringing one destination file in line with its rendered content: compare, stage, check,
//! swap, reload.
//!
//! The destination is never half-written and never holds content that failed its check: the
//! new content goes to a stage file in the destination's own directory (so the final rename is
//! atomic on the same filesystem), is flushed to disk, checked, and only then renamed over the
//! destination. Re-running with the same content does nothing: no write, no reload.
//!
//! Destinations are reconciled in batches, so that a service reloads once, on all its new
//! files: every item is staged and checked first, then all are swapped, then each distinct
//! reload command runs once.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use md5::{Digest, Md5};
use similar::TextDiff;
use tokio_util::task::TaskTracker;

use crate::command::{self, CommandEnv, CommandError, Placeholder, ShellCommand};
use crate::resource::{OutputFormat, Resource};
use crate::secrets;
use crate::stage;

/// Permission bits of a new destination when the resource sets no `mode`.
const DEFAULT_MODE: u32 = 0o644;

/// How long file work still running when the process stops is waited for.
pub(crate) const FILE_WORK_GRACE: Duration = Duration::from_secs(5);

/// The process's request to stop, as the file work of a batch sees it: `true` once asked.
pub(crate) type StopRequest = tokio::sync::watch::Receiver<bool>;

/// How the pipeline may act.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Options {
    /// Compare and print a diff only.
    pub noop: bool,
    /// Write files, run no check or reload command.
    pub sync_only: bool,
    /// Keep the stage file when its check fails.
    pub keep_stage_file: bool,
    /// The credentials of reconfd's environment that commands get after all.
    pub command_env: CommandEnv,
}

/// What reconciling one resource did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Content, mode and owner already matched: nothing was written or run.
    InSync,
    /// The destination was replaced (and reloaded, unless sync-only).
    Updated,
    /// The destination already matched, and the reload that an earlier attempt failed to
    /// run has now succeeded.
    Reloaded,
    /// In noop mode: the destination differs and would have been replaced.
    WouldUpdate,
}

/// Why a destination could not be brought in sync. The destination is unchanged unless the
/// error says it was updated.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReconcileError {
    /// Reading, staging or renaming failed.
    #[error("{dest}: {message}")]
    Io {
        /// The destination.
        dest: String,
        /// What failed.
        message: String,
    },
    /// The check command rejected the staged content; the destination is unchanged.
    #[error("{dest}: check failed, destination left unchanged: {source}{}", owed_note(.owed_reload))]
    Check {
        /// The destination.
        dest: String,
        /// The command's failure, with its output.
        source: CommandError,
        /// When the file in place is one an earlier sync swapped in and whose reload failed:
        /// that reload, run again all the same, as the service has not loaded it yet.
        owed_reload: Option<Result<(), Box<CommandError>>>,
    },
    /// The destination was updated but its reload command failed.
    #[error("{dest}: {}the reload command failed: {source}", updated_but(.swapped))]
    Reload {
        /// The destination.
        dest: String,
        /// This sync swapped the file in; false when it only ran a reload an earlier one owed.
        swapped: bool,
        /// The command's failure, with its output.
        source: CommandError,
    },
    /// The reload command failed and the resource has `rollback`: the previous destination
    /// was put back and the reload run again, or putting it back failed.
    #[error("{dest}: the reload command failed: {source}; {rollback}")]
    RolledBack {
        /// The destination.
        dest: String,
        /// The first reload's failure.
        source: Box<CommandError>,
        /// What the rollback achieved.
        rollback: Rollback,
    },
    /// Another template of the same resource file failed, so this one was not swapped in
    /// either.
    #[error("{dest}: not replaced, as another template of the same resource failed")]
    Held {
        /// The destination.
        dest: String,
    },
    /// The rendered output is not valid in the resource's `output_format`; nothing was
    /// written or run.
    #[error(
        "{dest}: the rendered output is not valid {format}, destination left unchanged: {message}"
    )]
    Format {
        /// The destination.
        dest: String,
        /// The format it must be in.
        format: OutputFormat,
        /// The parser's complaint, with its line and column.
        message: String,
    },
}

/// What a check failure's message adds about the reload the file in place was owed.
fn owed_note(owed_reload: &Option<Result<(), Box<CommandError>>>) -> String {
    match owed_reload {
        None => String::new(),
        Some(Ok(())) => "; the file in place, swapped in earlier, has now been reloaded".into(),
        Some(Err(e)) => {
            format!("; the reload the file in place (swapped in earlier) is owed failed again: {e}")
        }
    }
}

/// How a failed reload's message starts: whether that sync had just replaced the file.
fn updated_but(swapped: &bool) -> &'static str {
    if *swapped { "updated, but " } else { "" }
}

impl ReconcileError {
    /// Whether the destination holds the new file all the same: its reload failed, and no
    /// rollback put the previous one back.
    pub fn swapped(&self) -> bool {
        match self {
            ReconcileError::Reload { swapped, .. } => *swapped,
            ReconcileError::RolledBack { rollback, .. } => {
                matches!(rollback, Rollback::NotRestored(_))
            }
            ReconcileError::Io { .. }
            | ReconcileError::Check { .. }
            | ReconcileError::Held { .. }
            | ReconcileError::Format { .. } => false,
        }
    }
}

/// What a rollback after a failed reload achieved.
#[derive(Clone, Debug)]
pub(crate) enum Rollback {
    /// The previous file is back and the reload on it succeeded: the service runs the last
    /// good configuration.
    Reloaded,
    /// The previous file is back, but the reload on it failed too.
    ReloadFailed(Box<CommandError>),
    /// The previous file could not be put back; the new file stays.
    NotRestored(String),
}

impl std::fmt::Display for Rollback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rollback::Reloaded => {
                f.write_str("the previous file was put back, and the reload on it succeeded")
            }
            Rollback::ReloadFailed(e) => write!(
                f,
                "the previous file was put back, but the reload on it failed too: {e}"
            ),
            Rollback::NotRestored(e) => write!(
                f,
                "the previous file could not be put back, so the new one stays: {e}"
            ),
        }
    }
}

/// The destination as it is on disk.
struct Actual {
    content: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// The destination as it should be.
struct Wanted {
    mode: u32,
    /// Owner to set; `None` leaves the owner of a new file to the process.
    uid: Option<u32>,
    gid: Option<u32>,
}

/// One rendered resource of a batch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Item<'a> {
    /// The resource.
    pub resource: &'a Resource,
    /// Its rendered content, shared rather than copied: a batch of large renders would
    /// otherwise be held twice.
    pub rendered: &'a Arc<String>,
    /// The md5 of `rendered`, when it was computed already.
    pub md5: Option<&'a str>,
    /// The destination was swapped in but its reload failed, and no reload has succeeded
    /// since: the reload runs even if the destination is found in sync.
    pub reload_owed: bool,
}

/// An item of a batch as the blocking pool gets it: owned, as the work may outlive the batch
/// (abandoned at a stop).
struct Work {
    resource: Resource,
    rendered: Arc<String>,
    md5: Option<String>,
}

/// Brings a batch of destinations in line, in three steps: every item is compared, staged and
/// checked; then every staged item is swapped in; then each distinct reload command runs once,
/// after all the files it reloads are in place. The items of one resource file (its
/// `[[template]]` tables) are swapped together or not at all: if one fails, or its file is in
/// `failed_files` (a template that did not render), none of them is swapped. Returns one
/// result per item, in order.
///
/// The file work runs on the blocking pool: a destination on a hung or slow filesystem (an
/// NFS mount, a disk busy with writeback) must not stall the thread that serves signals,
/// health and the watches. A batch without check commands makes one trip there (compare,
/// stage and swap); one with checks makes two, as the checks run in between.
pub(crate) async fn reconcile_batch(
    items: &[Item<'_>],
    failed_files: &BTreeSet<&Path>,
    options: Options,
    stop: &StopRequest,
) -> Vec<Result<Outcome, ReconcileError>> {
    let work: Vec<Work> = items
        .iter()
        .map(|item| Work {
            resource: item.resource.clone(),
            rendered: Arc::clone(item.rendered),
            md5: item.md5.map(str::to_owned),
        })
        .collect();
    let failed_files: BTreeSet<PathBuf> =
        failed_files.iter().map(|file| file.to_path_buf()).collect();
    let checks = !options.sync_only && items.iter().any(|item| item.resource.check_cmd.is_some());
    let mut steps = if checks {
        let staged = off_the_runtime(stop, move || {
            let steps = stage_batch(&work, options);
            (work, steps)
        })
        .await;
        match staged {
            Some((work, mut steps)) => {
                for (item, step) in items.iter().zip(steps.iter_mut()) {
                    if let (Step::Staged(_), Some(check)) = (&*step, &item.resource.check_cmd)
                        && let Step::Staged(staged) =
                            std::mem::replace(step, Step::Done(Outcome::Updated))
                    {
                        *step = checked(item.resource, check, staged, options).await;
                    }
                }
                hold_failed_files(&work, &mut steps, &failed_files);
                swap_staged(work, &mut steps, stop).await;
                steps
            }
            None => abandoned_steps(items),
        }
    } else {
        off_the_runtime_then_close(stop, move |given_up| {
            let mut steps = stage_batch(&work, options);
            hold_failed_files(&work, &mut steps, &failed_files);
            if given_up() {
                // Dropped with the answer nobody waits for, the stage files are removed.
                return (steps, Replaced::default());
            }
            let staged = take_staged(&mut steps);
            let (swapped, replaced) = swap_all(&work, staged);
            for (index, result) in swapped {
                steps[index] = swapped_step(result);
            }
            (steps, replaced)
        })
        .await
        .unwrap_or_else(|| abandoned_steps(items))
    };
    if !options.sync_only {
        reload_batch(items, &mut steps, options, stop).await;
    }
    items
        .iter()
        .zip(steps)
        .map(|(item, step)| match step {
            Step::Done(outcome) => Ok(outcome),
            Step::Swapped(_) => Ok(Outcome::Updated),
            Step::Failed(e) => Err(e),
            // Every staged item was swapped above or failed; one left over was not swapped.
            Step::Staged(_) => Err(ReconcileError::Held {
                dest: item.resource.dest.display().to_string(),
            }),
        })
        .collect()
}

/// Holds back (fails, removing its stage file) every staged item whose resource file has an
/// item that failed or is in `failed_files`: a file's templates swap together or not at all.
fn hold_failed_files(work: &[Work], steps: &mut [Step], failed_files: &BTreeSet<PathBuf>) {
    let mut failed: BTreeSet<&Path> = failed_files.iter().map(PathBuf::as_path).collect();
    failed.extend(
        work.iter()
            .zip(steps.iter())
            .filter(|(_, step)| matches!(step, Step::Failed(_)))
            .map(|(item, _)| item.resource.file.as_path()),
    );
    for (Work { resource, .. }, step) in work.iter().zip(steps.iter_mut()) {
        if matches!(step, Step::Staged(_)) && failed.contains(resource.file.as_path()) {
            // Dropping the stage file removes it.
            *step = Step::Failed(ReconcileError::Held {
                dest: resource.dest.display().to_string(),
            });
        }
    }
}

/// Where an item of a batch is.
enum Step {
    /// Finished with this outcome (in sync, or noop).
    Done(Outcome),
    /// Staged and checked, waiting to be swapped in.
    Staged(Staged),
    /// Swapped in; the destination as it was before, for a rollback.
    Swapped(Option<Actual>),
    /// Failed; the destination is as the error says.
    Failed(ReconcileError),
}

/// A checked stage file ready to go in.
struct Staged {
    file: tempfile::NamedTempFile,
    previous: Option<Actual>,
    /// The destination it replaces, open: see [`Replaced`].
    replaced: Option<File>,
    wanted: Wanted,
    content: Arc<String>,
}

/// Compares, validates and stages every item of the batch, in order; blocking.
fn stage_batch(work: &[Work], options: Options) -> Vec<Step> {
    let mut steps: Vec<Step> = work
        .iter()
        .map(|item| compare_and_stage(item, options).unwrap_or_else(Step::Failed))
        .collect();
    flush_staged(work, &mut steps);
    steps
}

/// Every item of a batch whose file work was abandoned at a stop, failed.
fn abandoned_steps(items: &[Item<'_>]) -> Vec<Step> {
    items
        .iter()
        .map(|item| {
            Step::Failed(ReconcileError::Io {
                dest: item.resource.dest.display().to_string(),
                message: abandoned(),
            })
        })
        .collect()
}

/// Flushes every stage file of the batch to disk. They are all written before the first is
/// flushed, so the filesystem writes them out together: on ext4, twenty stage files flushed
/// each right after its write cost twenty journal commits, flushed after all the writes about
/// two thirds of the time. A stage file that cannot be flushed fails its item (and is removed).
fn flush_staged(work: &[Work], steps: &mut [Step]) {
    for (Work { resource, .. }, step) in work.iter().zip(steps.iter_mut()) {
        if let Step::Staged(staged) = step
            && let Err(e) = staged.file.as_file().sync_all()
        {
            *step = Step::Failed(ReconcileError::Io {
                dest: resource.dest.display().to_string(),
                message: format!("cannot stage the new content: {e}"),
            });
        }
    }
}

/// Runs the `check` command of `resource` on its stage file: still staged if it passes.
async fn checked(resource: &Resource, check: &str, staged: Staged, options: Options) -> Step {
    let command = ShellCommand::new(check).bind(Placeholder::Src, staged.file.path().as_os_str());
    let Err(source) = command::run(&command, resource.check_timeout, options.command_env).await
    else {
        return Step::Staged(staged);
    };
    if options.keep_stage_file {
        let stage_path = staged.file.path().display().to_string();
        match stage::keep(staged.file) {
            Ok(kept) => tracing::info!("Keeping stage file {}", kept.display()),
            Err(e) => tracing::warn!("could not keep stage file {stage_path}: {e}"),
        }
    }
    Step::Failed(ReconcileError::Check {
        dest: resource.dest.display().to_string(),
        source,
        owed_reload: None,
    })
}

/// Runs blocking file work on the blocking pool and waits for it; a panic in it goes on
/// unwinding here, where the controller catches it as one of its own. Once `stop` is
/// requested, the work gets [`FILE_WORK_GRACE`] more to finish; after that it is abandoned
/// (`None`): a hung filesystem cannot be interrupted, but it must not keep the process from
/// ending.
async fn off_the_runtime<T: Send + 'static>(
    stop: &StopRequest,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    off_the_runtime_then_close(stop, move |_| (work(), Replaced::default())).await
}

/// [`off_the_runtime`] for work that swaps files in. It is given a question to ask before its
/// swaps, `given_up`: whether its batch stopped waiting for it (its `--onetime` run was
/// interrupted, or the grace after a stop ran out); if so, it swaps nothing in. It returns the
/// files its swaps replaced: the answer comes back first, then the blocking thread closes them
/// (see [`Replaced`]).
async fn off_the_runtime_then_close<T: Send + 'static>(
    stop: &StopRequest,
    work: impl FnOnce(&dyn Fn() -> bool) -> (T, Replaced) + Send + 'static,
) -> Option<T> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let running = FILE_WORK.token();
    let task = tokio::task::spawn_blocking(move || {
        // Counted until the end: an answer nobody waits for is dropped here, and with it the
        // stage files it holds, which removes them.
        let _running = running;
        let given_up = || reply.is_closed();
        let (value, replaced) = work(&given_up);
        // Nobody waits for the answer once the work was given up.
        let _ = reply.send(value);
        drop(replaced);
    });
    tokio::pin!(answer);
    let mut stop = stop.clone();
    let stop_requested = async {
        // The sender gone means nobody can ask for a stop any more.
        if stop.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let answered = tokio::select! {
        answered = &mut answer => answered,
        () = stop_requested => match tokio::time::timeout(FILE_WORK_GRACE, &mut answer).await {
            Ok(answered) => answered,
            Err(_) => return None,
        },
    };
    match answered {
        Ok(value) => Some(value),
        // No answer: the work panicked, or the runtime is shutting down, which cancels a
        // blocking task and ends the process with it.
        Err(_) => match task.await {
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            _ => None,
        },
    }
}

/// The file work on the blocking pool, process-wide: each piece holds a token until it ends.
static FILE_WORK: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

/// Waits until no file work runs on the blocking pool, for at most `limit`; `false` when some
/// still ran at the limit. An interrupted run calls this after dropping its controllers: work
/// whose answer is no longer wanted removes its own stage files when it ends, which it cannot
/// do once the process has exited.
pub(crate) async fn file_work_ended(limit: Duration) -> bool {
    // Closed, the tracker's wait ends once it is empty; the run starts no file work any more.
    FILE_WORK.close();
    tokio::time::timeout(limit, FILE_WORK.wait()).await.is_ok()
}

/// Why file work abandoned at a stop failed its destination.
fn abandoned() -> String {
    format!(
        "the file operation did not finish within {} of the stop (a hung filesystem?); \
         abandoned",
        humantime::format_duration(FILE_WORK_GRACE)
    )
}

/// Compares the destination with `rendered`; when it differs, validates the content and
/// writes it to a stage file beside the destination (or, in noop mode, prints the diff).
fn compare_and_stage(item: &Work, options: Options) -> Result<Step, ReconcileError> {
    let resource = &item.resource;
    let rendered = Arc::clone(&item.rendered);
    let dest = &resource.dest;
    let dest_name = dest.display().to_string();
    let io_error = |what: &str, e: std::io::Error| ReconcileError::Io {
        dest: dest_name.clone(),
        message: format!("{what}: {e}"),
    };
    let (actual, open) = match read_actual(dest) {
        Ok(Some((actual, open))) => (Some(actual), Some(open)),
        Ok(None) => (None, None),
        Err(e) => return Err(io_error("cannot read the destination", e)),
    };
    let wanted = Wanted {
        mode: resource
            .mode
            .or(actual.as_ref().map(|actual| actual.mode))
            .unwrap_or(DEFAULT_MODE),
        uid: resource.uid.or(actual.as_ref().map(|actual| actual.uid)),
        gid: resource.gid.or(actual.as_ref().map(|actual| actual.gid)),
    };
    if in_sync(
        &dest_name,
        actual.as_ref(),
        (rendered.as_bytes(), item.md5.as_deref()),
        &wanted,
        resource.secret,
    ) {
        tracing::debug!("Target config {dest_name} in sync");
        return Ok(Step::Done(Outcome::InSync));
    }
    tracing::info!("Target config {dest_name} out of sync");
    if let Some(format) = resource.output_format {
        format
            .validate(&rendered)
            .map_err(|message| ReconcileError::Format {
                dest: dest_name.clone(),
                format,
                message,
            })?;
    }

    if options.noop {
        let old = actual
            .as_ref()
            .map(|actual| String::from_utf8_lossy(&actual.content).into_owned())
            .unwrap_or_default();
        let diff = TextDiff::from_lines(old.as_str(), rendered.as_str());
        let mut unified = diff.unified_diff();
        unified.header(&dest_name, &format!("{dest_name} (rendered)"));
        // A secret resource's lines are hidden whole: a template may have turned a secret
        // into text no mask recognises.
        let diff = if resource.secret {
            masked(&unified.to_string())
        } else {
            unified.to_string()
        };
        crate::stdout::print(&secrets::mask(&diff));
        tracing::warn!("Noop mode enabled. {dest_name} will not be modified");
        return Ok(Step::Done(Outcome::WouldUpdate));
    }

    prepare_dir(dest, resource.create_dest_dirs).map_err(|message| ReconcileError::Io {
        dest: dest_name.clone(),
        message,
    })?;
    // Flushed with the rest of the batch (`flush_staged`).
    let staged = write_stage(dest, rendered.as_bytes(), &wanted, resource)
        .map_err(|e| io_error("cannot stage the new content", e))?;
    Ok(Step::Staged(Staged {
        file: staged,
        // Only a backup or a rollback reads the old content again; until the swap, it would
        // be held for nothing.
        previous: actual.filter(|_| resource.backup || resource.rollback),
        replaced: open,
        wanted,
        content: rendered,
    }))
}

/// Swaps every staged item of the batch in, in order, on the blocking pool; on abandonment
/// at a stop, each of them fails.
async fn swap_staged(work: Vec<Work>, steps: &mut [Step], stop: &StopRequest) {
    let staged = take_staged(steps);
    if staged.is_empty() {
        return;
    }
    let dests: Vec<(usize, String)> = staged
        .iter()
        .map(|(index, _)| (*index, work[*index].resource.dest.display().to_string()))
        .collect();
    let swapped = off_the_runtime_then_close(stop, move |given_up| {
        if given_up() {
            // Dropped here, the stage files are removed.
            return (Vec::new(), Replaced::default());
        }
        swap_all(&work, staged)
    })
    .await
    .unwrap_or_else(|| {
        dests
            .into_iter()
            .map(|(index, dest)| {
                let error = ReconcileError::Io {
                    dest,
                    message: abandoned(),
                };
                (index, Err(error))
            })
            .collect()
    });
    for (index, result) in swapped {
        steps[index] = swapped_step(result);
    }
}

/// What a swap comes to: the destination as it was before (for a rollback), or the failure.
type SwapResult = Result<Option<Actual>, ReconcileError>;

/// The staged items of a batch with their indexes, taken out of `steps` (each left as if
/// swapped) to be swapped.
fn take_staged(steps: &mut [Step]) -> Vec<(usize, Staged)> {
    let mut staged = Vec::new();
    for (index, step) in steps.iter_mut().enumerate() {
        if matches!(step, Step::Staged(_))
            && let Step::Staged(file) = std::mem::replace(step, Step::Done(Outcome::Updated))
        {
            staged.push((index, file));
        }
    }
    staged
}

/// Swaps `staged` (items of `work` by index) in, in order, then flushes their directories;
/// blocking. The files they replaced come back still open, to be closed once the answer has
/// gone (see [`Replaced`]).
fn swap_all(work: &[Work], staged: Vec<(usize, Staged)>) -> (Vec<(usize, SwapResult)>, Replaced) {
    let mut replaced = Replaced::default();
    let swapped: Vec<(usize, SwapResult)> = staged
        .into_iter()
        .map(|(index, file)| (index, swap(&work[index].resource, file, &mut replaced)))
        .collect();
    flush_swapped(work, &swapped);
    (swapped, replaced)
}

/// The files a batch's swaps replaced, held open until the batch's answer has gone back to
/// its controller. The last close of a replaced file is what frees it on disk (its inode and
/// blocks), work that the rename would otherwise do before returning (about 200 µs for a
/// small file on ext4): the new file is in place before that either way, but the directory
/// flush and the reload waited for it. Done after the answer, it overlaps the reload.
/// Dropping this closes them.
#[derive(Default)]
struct Replaced(Vec<File>);

impl Replaced {
    /// Holds `file` open until this is dropped.
    fn keep(&mut self, file: Option<File>) {
        self.0.extend(file);
    }
}

/// The step of an item after its swap.
fn swapped_step(result: SwapResult) -> Step {
    match result {
        Ok(previous) => Step::Swapped(previous),
        Err(e) => Step::Failed(e),
    }
}

/// Puts a checked stage file in place of the destination (its directory is flushed with the
/// rest of the batch, [`flush_swapped`]), keeping the file it replaced open in `replaced`;
/// returns the destination as it was.
fn swap(resource: &Resource, staged: Staged, replaced: &mut Replaced) -> SwapResult {
    let dest = &resource.dest;
    let dest_name = dest.display().to_string();
    let io_error = |message: String| ReconcileError::Io {
        dest: dest_name.clone(),
        message,
    };
    if let (true, Some(previous)) = (resource.backup, &staged.previous) {
        backup(dest, previous).map_err(io_error)?;
    }
    put_in_place(dest, staged.file, staged.content.as_bytes(), &staged.wanted).map_err(io_error)?;
    replaced.keep(staged.replaced);
    Ok(staged.previous)
}

/// Flushes the directories of the batch's swaps, each once, after all its renames: the
/// renames of one directory become durable in one flush, before any reload runs.
fn flush_swapped(work: &[Work], swapped: &[(usize, SwapResult)]) {
    let mut flushed: BTreeMap<&Path, Result<(), String>> = BTreeMap::new();
    for (index, result) in swapped {
        if result.is_err() {
            continue;
        }
        let dest = work[*index].resource.dest.as_path();
        let outcome = flushed.entry(parent_dir(dest)).or_insert_with_key(|dir| {
            File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|e| e.to_string())
        });
        if let Err(e) = outcome {
            // The new file is in place; only its survival of a crash is in doubt. Skipping
            // the reload now would leave the service on the old file for good, as the next
            // run finds the destination in sync.
            tracing::warn!(
                "{}: cannot flush the directory after the swap: {e}",
                dest.display()
            );
        }
        tracing::info!("Target config {} has been updated", dest.display());
    }
}

/// Runs each distinct reload command of the swapped items once. When one fails, the items
/// with `rollback` get their previous file back and the command runs again on them.
async fn reload_batch(
    items: &[Item<'_>],
    steps: &mut [Step],
    options: Options,
    stop: &StopRequest,
) {
    let env = options.command_env;
    // Commands in the order their first item comes, with the items they reload.
    let mut commands: Vec<(ShellCommand, Vec<usize>)> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let Some(reload) = &item.resource.reload_cmd else {
            continue;
        };
        let due = match &steps[index] {
            Step::Swapped(_) => true,
            // The file in place was never reloaded: its reload is tried again, also when the
            // new content was refused, which leaves that file in place.
            Step::Done(Outcome::InSync) | Step::Failed(ReconcileError::Check { .. }) => {
                item.reload_owed && !options.noop
            }
            _ => false,
        };
        if !due {
            continue;
        }
        let command =
            ShellCommand::new(reload).bind(Placeholder::Dest, item.resource.dest.as_os_str());
        match commands
            .iter_mut()
            .find(|(existing, _)| *existing == command)
        {
            Some((_, members)) => members.push(index),
            None => commands.push((command, vec![index])),
        }
    }
    for (command, members) in commands {
        let timeout = members
            .iter()
            .map(|index| items[*index].resource.reload_timeout)
            .max()
            .unwrap_or_default();
        let dests: Vec<String> = members
            .iter()
            .map(|index| items[*index].resource.dest.display().to_string())
            .collect();
        let dests = dests.join(", ");
        let source = match command::run(&command, timeout, env).await {
            Ok(output) => {
                if output.is_empty() {
                    tracing::info!("Reloaded for {dests}");
                } else {
                    tracing::info!("Reloaded for {dests}: {output}");
                }
                for index in members {
                    match &mut steps[index] {
                        Step::Done(Outcome::InSync) => steps[index] = Step::Done(Outcome::Reloaded),
                        Step::Failed(ReconcileError::Check { owed_reload, .. }) => {
                            *owed_reload = Some(Ok(()));
                        }
                        _ => {}
                    }
                }
                continue;
            }
            Err(source) => source,
        };
        // The members with `rollback`, each with the file it had; every member's step is
        // replaced by its failure below.
        let mut to_restore: Vec<(usize, Resource, Option<Actual>)> = Vec::new();
        for index in &members {
            let resource = items[*index].resource;
            if resource.rollback
                && let Step::Swapped(previous) =
                    std::mem::replace(&mut steps[*index], Step::Done(Outcome::Updated))
            {
                to_restore.push((*index, resource.clone(), previous));
            }
        }
        // Members whose previous file is back, and those whose restore failed.
        let restoring: Vec<usize> = to_restore.iter().map(|(index, _, _)| *index).collect();
        let (restored, not_restored): (Vec<usize>, Vec<(usize, String)>) =
            off_the_runtime(stop, move || {
                let mut restored = Vec::new();
                let mut not_restored = Vec::new();
                for (index, resource, previous) in to_restore {
                    let dest_name = resource.dest.display().to_string();
                    tracing::warn!(
                        "{dest_name}: the reload failed; putting the previous file back"
                    );
                    match restore(&resource.dest, previous.as_ref(), &resource) {
                        Ok(()) => restored.push(index),
                        Err(e) => not_restored.push((index, e)),
                    }
                }
                (restored, not_restored)
            })
            .await
            .unwrap_or_else(|| {
                let not_restored = restoring.into_iter().map(|i| (i, abandoned())).collect();
                (Vec::new(), not_restored)
            });
        // Only a restored file gives the second reload a configuration worth loading.
        let second = if restored.is_empty() {
            None
        } else {
            Some(match command::run(&command, timeout, env).await {
                Ok(_) => Rollback::Reloaded,
                Err(e) => Rollback::ReloadFailed(Box::new(e)),
            })
        };
        for index in members {
            if let Step::Failed(ReconcileError::Check { owed_reload, .. }) = &mut steps[index] {
                *owed_reload = Some(Err(Box::new(source.clone())));
                continue;
            }
            let dest = items[index].resource.dest.display().to_string();
            let swapped = !matches!(steps[index], Step::Done(Outcome::InSync));
            let rollback = if restored.contains(&index) {
                second.clone()
            } else {
                not_restored
                    .iter()
                    .find(|(failed, _)| *failed == index)
                    .map(|(_, e)| Rollback::NotRestored(e.clone()))
            };
            steps[index] = Step::Failed(match rollback {
                Some(rollback) => ReconcileError::RolledBack {
                    dest,
                    source: Box::new(source.clone()),
                    rollback,
                },
                None => ReconcileError::Reload {
                    dest,
                    swapped,
                    source: source.clone(),
                },
            });
        }
    }
}

/// Makes sure the destination's directory exists, creating the missing ones (mode 0755) when
/// `create`.
fn prepare_dir(dest: &Path, create: bool) -> Result<(), String> {
    let Some(dir) = dest.parent().filter(|dir| !dir.as_os_str().is_empty()) else {
        return Ok(());
    };
    match std::fs::metadata(dir) {
        Ok(metadata) if metadata.is_dir() => return Ok(()),
        Ok(_) => return Err(format!("{} is not a directory", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read directory {}: {e}", dir.display())),
    }
    if !create {
        return Err(format!(
            "directory {} does not exist (create_dest_dirs = true creates it)",
            dir.display()
        ));
    }
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|ancestor| !ancestor.as_os_str().is_empty() && !ancestor.exists())
        .collect();
    for missing in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(0o755).create(missing) {
            // The umask (systemd's `UMask=0077`, say) would otherwise keep a service running
            // as another user from reaching its file.
            Ok(()) => std::fs::set_permissions(missing, std::fs::Permissions::from_mode(0o755)),
            // Made meanwhile by someone else: as good.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && missing.is_dir() => Ok(()),
            Err(e) => Err(e),
        }
        .map_err(|e| format!("cannot create directory {}: {e}", missing.display()))?;
    }
    Ok(())
}

/// Keeps the destination's current content and mode as `<dest>.bak`, replacing an older one
/// atomically: a copy, not a hard link, as a destination written in place would change a
/// linked backup with it.
fn backup(dest: &Path, actual: &Actual) -> Result<(), String> {
    let mut name = dest.as_os_str().to_owned();
    name.push(".bak");
    let path = std::path::PathBuf::from(name);
    let write = || -> std::io::Result<()> {
        let mut staged = stage::create(dest)?;
        staged.write_all(&actual.content)?;
        staged
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(actual.mode))?;
        staged.as_file().sync_all()?;
        staged.persist(&path)?;
        Ok(())
    };
    write().map_err(|e| format!("cannot write the backup {}: {e}", path.display()))
}

/// Puts `previous` back as the destination (or removes the destination when there was none),
/// the same atomic way a new file goes in.
fn restore(dest: &Path, previous: Option<&Actual>, resource: &Resource) -> Result<(), String> {
    match previous {
        Some(previous) => {
            let wanted = Wanted {
                mode: previous.mode,
                uid: Some(previous.uid),
                gid: Some(previous.gid),
            };
            let staged = stage(dest, &previous.content, &wanted, resource)
                .map_err(|e| format!("cannot stage the previous content: {e}"))?;
            put_in_place(dest, staged, &previous.content, &wanted)?;
        }
        None => match std::fs::remove_file(dest) {
            // Already gone (the reload command removed it): as good.
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "cannot remove the new file, which had no predecessor: {e}"
                ));
            }
            _ => {}
        },
    }
    if let Err(e) = sync_parent_dir(dest) {
        // The previous file is back; only its survival of a crash is in doubt.
        tracing::warn!(
            "{}: cannot flush the directory after the rollback: {e}",
            dest.display()
        );
    }
    Ok(())
}

/// The destination as it is, and the file open, if there is one. The open file is what a
/// swap holds on to (see [`Replaced`]).
fn read_actual(dest: &Path) -> std::io::Result<Option<(Actual, File)>> {
    let mut file = match File::open(dest) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let metadata = file.metadata()?;
    let mut content = Vec::new();
    file.read_to_end(&mut content)?;
    let actual = Actual {
        content,
        mode: metadata.permissions().mode() & 0o7777,
        uid: metadata.uid(),
        gid: metadata.gid(),
    };
    Ok(Some((actual, file)))
}

/// A unified diff with every line's content replaced: the headers and `@@` line numbers show
/// where the file changes, the `+`/`-` markers how, and nothing shows what it holds.
fn masked(diff: &str) -> String {
    diff.lines()
        .map(|line| match line.chars().next() {
            Some('@') => format!("{line}\n"),
            _ if line.starts_with("---") || line.starts_with("+++") => format!("{line}\n"),
            Some(marker @ ('+' | '-' | ' ')) => format!("{marker}<secret line>\n"),
            _ => format!("{line}\n"),
        })
        .collect()
}

/// Compares owner, mode and content, logging each difference as confd does, with the md5 of
/// either content (`rendered` comes with its md5 when it is known already); the checksums of
/// `secret` content are not logged (a checksum of a short secret gives it away). The contents
/// are compared byte for byte: checksums are computed only for the log line, and only when it
/// is written.
fn in_sync(
    dest: &str,
    actual: Option<&Actual>,
    (rendered, rendered_md5): (&[u8], Option<&str>),
    wanted: &Wanted,
    secret: bool,
) -> bool {
    let Some(actual) = actual else {
        tracing::info!("{dest} does not exist yet");
        return false;
    };
    let mut same = true;
    if let Some(uid) = wanted.uid.filter(|uid| *uid != actual.uid) {
        tracing::info!("{dest} has UID {} should be {uid}", actual.uid);
        same = false;
    }
    if let Some(gid) = wanted.gid.filter(|gid| *gid != actual.gid) {
        tracing::info!("{dest} has GID {} should be {gid}", actual.gid);
        same = false;
    }
    if actual.mode != wanted.mode {
        tracing::info!(
            "{dest} has mode {:04o} should be {:04o}",
            actual.mode,
            wanted.mode
        );
        same = false;
    }
    if actual.content != rendered {
        if secret {
            tracing::info!("{dest} has other content (secret: checksums not shown)");
        } else if tracing::enabled!(tracing::Level::INFO) {
            let want = rendered_md5.map_or_else(|| md5_hex(rendered), str::to_owned);
            let have = md5_hex(&actual.content);
            tracing::info!("{dest} has md5sum {have} should be {want}");
        }
        same = false;
    }
    same
}

/// Lower-case hex md5 of `bytes`, as `md5sum` prints it.
pub fn md5_hex(bytes: &[u8]) -> String {
    format!("{:x}", Md5::digest(bytes))
}

/// Writes the stage file next to the destination and flushes it to disk (see [`write_stage`]).
fn stage(
    dest: &Path,
    content: &[u8],
    wanted: &Wanted,
    resource: &Resource,
) -> std::io::Result<tempfile::NamedTempFile> {
    let staged = write_stage(dest, content, wanted, resource)?;
    staged.as_file().sync_all()?;
    Ok(staged)
}

/// Writes the stage file next to the destination, not yet flushed: created exclusively,
/// readable by the owner only until it is given the wanted owner and mode, which come before
/// the flush so that it makes them durable with the content.
fn write_stage(
    dest: &Path,
    content: &[u8],
    wanted: &Wanted,
    resource: &Resource,
) -> std::io::Result<tempfile::NamedTempFile> {
    let mut staged = stage::create(dest)?;
    staged.write_all(content)?;
    set_owner(staged.as_file(), wanted, resource)?;
    staged
        .as_file()
        .set_permissions(std::fs::Permissions::from_mode(wanted.mode))?;
    Ok(staged)
}

/// Renames `staged` over `dest`. A destination bind-mounted on its own (a single file mounted
/// into a container) cannot be renamed over; like confd, it is written in place instead.
fn put_in_place(
    dest: &Path,
    staged: tempfile::NamedTempFile,
    content: &[u8],
    wanted: &Wanted,
) -> Result<(), String> {
    match staged.persist(dest) {
        Ok(_) => Ok(()),
        Err(e) if e.error.raw_os_error() == Some(nix::libc::EBUSY) => {
            tracing::warn!(
                "{} is busy (a mount point?); writing it in place, which is not atomic",
                dest.display()
            );
            write_in_place(dest, content, wanted)
                .map_err(|e| format!("cannot write the destination in place: {e}"))
        }
        Err(e) => Err(format!(
            "cannot rename the stage file over the destination: {}",
            e.error
        )),
    }
}

/// Overwrites `dest` itself with `content`, for destinations that cannot be renamed over.
fn write_in_place(dest: &Path, content: &[u8], wanted: &Wanted) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(dest)?;
    file.write_all(content)?;
    file.set_permissions(std::fs::Permissions::from_mode(wanted.mode))?;
    file.sync_all()
}

/// Sets the wanted owner. An owner the resource asks for must be set; an owner merely kept
/// from the old destination is kept where the process has the right to.
fn set_owner(file: &File, wanted: &Wanted, resource: &Resource) -> std::io::Result<()> {
    if wanted.uid.is_none() && wanted.gid.is_none() {
        return Ok(());
    }
    match std::os::unix::fs::fchown(file, wanted.uid, wanted.gid) {
        Ok(()) => Ok(()),
        Err(e) if resource.uid.is_none() && resource.gid.is_none() => {
            tracing::debug!("cannot keep the owner of {}: {e}", resource.dest.display());
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Flushes the directory entry of a rename, so the swap survives a crash.
fn sync_parent_dir(dest: &Path) -> std::io::Result<()> {
    File::open(parent_dir(dest))?.sync_all()
}

/// The directory `dest` is in (`.` for a bare file name).
fn parent_dir(dest: &Path) -> &Path {
    dest.parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brings `resource`'s destination in line with `rendered`: a batch of one, never stopped.
    async fn reconcile(
        resource: &Resource,
        rendered: &str,
        options: Options,
    ) -> Result<Outcome, ReconcileError> {
        let (_stop, never) = tokio::sync::watch::channel(false);
        let rendered = Arc::new(rendered.to_string());
        let items = [Item {
            resource,
            rendered: &rendered,
            md5: None,
            reload_owed: false,
        }];
        let mut results = reconcile_batch(&items, &BTreeSet::new(), options, &never).await;
        results.pop().unwrap_or(Ok(Outcome::InSync))
    }
    use std::time::Duration;

    fn resource(dir: &Path) -> Resource {
        Resource {
            file: dir.join("conf.d/app.toml"),
            src: dir.join("templates/app.tmpl"),
            dest: dir.join("app.conf"),
            prefix: String::new(),
            keys: vec!["/app".to_string()],
            mode: None,
            uid: None,
            gid: None,
            check_cmd: None,
            reload_cmd: None,
            check_timeout: Duration::from_secs(5),
            reload_timeout: Duration::from_secs(5),
            backend: None,
            wait: None,
            backup: false,
            rollback: false,
            create_dest_dirs: false,
            output_format: None,
            render_timeout: None,
            render_max_size: None,
            min_keys: None,
            secret: false,
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn writes_new_file_with_default_mode_then_stays_in_sync() {
        let dir = tempfile::tempdir().expect("temp dir");
        let r = resource(dir.path());
        let outcome = reconcile(&r, "a = 1\n", Options::default())
            .await
            .expect("ok");
        assert_eq!(outcome, Outcome::Updated);
        assert_eq!(std::fs::read_to_string(&r.dest).expect("dest"), "a = 1\n");
        let mode = std::fs::metadata(&r.dest)
            .expect("meta")
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, DEFAULT_MODE);
        let outcome = reconcile(&r, "a = 1\n", Options::default())
            .await
            .expect("ok");
        assert_eq!(outcome, Outcome::InSync);
        assert_eq!(
            entries(dir.path()),
            ["app.conf"],
            "no stage file left behind"
        );
    }

    #[tokio::test]
    async fn mode_difference_alone_rewrites() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = resource(dir.path());
        std::fs::write(&r.dest, "a = 1\n").expect("write");
        r.mode = Some(0o600);
        let outcome = reconcile(&r, "a = 1\n", Options::default())
            .await
            .expect("ok");
        assert_eq!(outcome, Outcome::Updated);
        let mode = std::fs::metadata(&r.dest)
            .expect("meta")
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn existing_mode_is_kept_when_none_is_set() {
        let dir = tempfile::tempdir().expect("temp dir");
        let r = resource(dir.path());
        std::fs::write(&r.dest, "old\n").expect("write");
        std::fs::set_permissions(&r.dest, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        reconcile(&r, "new\n", Options::default())
            .await
            .expect("ok");
        let mode = std::fs::metadata(&r.dest)
            .expect("meta")
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o640);
    }

    #[tokio::test]
    async fn failed_check_leaves_destination_and_no_stage_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = resource(dir.path());
        std::fs::write(&r.dest, "good\n").expect("write");
        r.check_cmd =
            Some("grep -q good {{.src}} || { echo 'syntax error line 1'; exit 1; }".into());
        r.reload_cmd = Some(format!("touch {}", dir.path().join("reloaded").display()));
        let err = reconcile(&r, "bad\n", Options::default())
            .await
            .expect_err("check fails");
        assert!(err.to_string().contains("syntax error line 1"), "{err}");
        assert_eq!(std::fs::read_to_string(&r.dest).expect("dest"), "good\n");
        assert_eq!(entries(dir.path()), ["app.conf"]);
    }

    #[tokio::test]
    async fn keep_stage_file_keeps_the_rejected_content() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = resource(dir.path());
        r.check_cmd = Some("false".into());
        let options = Options {
            keep_stage_file: true,
            ..Options::default()
        };
        reconcile(&r, "bad\n", options)
            .await
            .expect_err("check fails");
        let names = entries(dir.path());
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(
            names[0].starts_with(".app.conf.reconfd-") && names[0].ends_with(".rejected"),
            "{names:?}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(&names[0])).expect("kept"),
            "bad\n"
        );
    }

    #[tokio::test]
    async fn check_sees_staged_content_and_reload_runs_after_swap() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = resource(dir.path());
        let seen = dir.path().join("seen");
        r.check_cmd = Some(format!("cp {{{{ src }}}} {}", seen.display()));
        r.reload_cmd = Some(format!(
            "cat {{{{.dest}}}} > {}",
            dir.path().join("reloaded").display()
        ));
        reconcile(&r, "v2\n", Options::default()).await.expect("ok");
        assert_eq!(std::fs::read_to_string(&seen).expect("seen"), "v2\n");
        let reloaded = std::fs::read_to_string(dir.path().join("reloaded")).expect("reloaded");
        assert_eq!(reloaded, "v2\n");
    }

    #[tokio::test]
    async fn sync_only_skips_commands_and_noop_writes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = resource(dir.path());
        r.check_cmd = Some("false".into());
        r.reload_cmd = Some("false".into());
        let sync_only = Options {
            sync_only: true,
            ..Options::default()
        };
        assert_eq!(
            reconcile(&r, "v1\n", sync_only).await.expect("ok"),
            Outcome::Updated
        );
        let noop = Options {
            noop: true,
            ..Options::default()
        };
        assert_eq!(
            reconcile(&r, "v2\n", noop).await.expect("ok"),
            Outcome::WouldUpdate
        );
        assert_eq!(std::fs::read_to_string(&r.dest).expect("dest"), "v1\n");
    }

    #[tokio::test]
    async fn failing_reload_is_reported_after_the_swap() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = resource(dir.path());
        r.reload_cmd = Some("echo 'no such service' >&2; exit 1".into());
        let err = reconcile(&r, "v1\n", Options::default())
            .await
            .expect_err("reload fails");
        assert!(matches!(err, ReconcileError::Reload { .. }), "{err}");
        assert!(err.to_string().contains("no such service"), "{err}");
        assert_eq!(std::fs::read_to_string(&r.dest).expect("dest"), "v1\n");
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).expect("meta").permissions().mode() & 0o7777
    }

    #[tokio::test]
    async fn rollback_puts_the_previous_file_back_and_reloads_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = resource(dir.path());
        std::fs::write(&r.dest, "old\n").expect("write");
        std::fs::set_permissions(&r.dest, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let log = dir.path().join("log");
        r.rollback = true;
        r.reload_cmd = Some(format!(
            "cat {{{{.dest}}}} >> {}; grep -q old {{{{.dest}}}}",
            log.display()
        ));
        let err = reconcile(&r, "new\n", Options::default())
            .await
            .expect_err("reload fails");
        assert!(
            matches!(
                err,
                ReconcileError::RolledBack {
                    rollback: Rollback::Reloaded,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("reload command failed"), "{err}");
        assert!(err.to_string().contains("reload on it succeeded"), "{err}");
        assert_eq!(std::fs::read_to_string(&r.dest).expect("dest"), "old\n");
        assert_eq!(mode_of(&r.dest), 0o640);
        assert_eq!(std::fs::read_to_string(&log).expect("log"), "new\nold\n");
        assert_eq!(
            entries(dir.path()),
            ["app.conf", "log"],
            "no stage file left"
        );
    }

    #[tokio::test]
    async fn rollback_of_a_new_file_removes_it_and_reports_a_second_failure() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = resource(dir.path());
        r.rollback = true;
        r.reload_cmd = Some("echo down >&2; exit 3".into());
        let err = reconcile(&r, "new\n", Options::default())
            .await
            .expect_err("reload fails");
        assert!(
            matches!(
                err,
                ReconcileError::RolledBack {
                    rollback: Rollback::ReloadFailed(_),
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("failed too"), "{err}");
        assert!(!r.dest.exists(), "a file with no predecessor is removed");
    }

    #[tokio::test]
    async fn rollback_follows_a_reload_that_timed_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = resource(dir.path());
        std::fs::write(&r.dest, "old\n").expect("write");
        r.rollback = true;
        r.reload_timeout = Duration::from_millis(300);
        r.reload_cmd = Some("if grep -q new {{.dest}}; then sleep 5; fi".into());
        let err = reconcile(&r, "new\n", Options::default())
            .await
            .expect_err("reload times out");
        assert!(
            matches!(
                &err,
                ReconcileError::RolledBack {
                    rollback: Rollback::Reloaded,
                    source,
                    ..
                } if matches!(**source, CommandError::TimedOut { .. })
            ),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&r.dest).expect("dest"), "old\n");
    }

    #[tokio::test]
    async fn a_rollback_that_cannot_put_the_file_back_says_so_and_does_not_reload() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        let mut r = resource(&sub);
        std::fs::write(&r.dest, "old\n").expect("write");
        let log = dir.path().join("log");
        r.rollback = true;
        r.reload_cmd = Some(format!(
            "echo run >> {}; rm -r {}; exit 1",
            log.display(),
            sub.display()
        ));
        let err = reconcile(&r, "new\n", Options::default())
            .await
            .expect_err("reload fails");
        assert!(
            matches!(
                err,
                ReconcileError::RolledBack {
                    rollback: Rollback::NotRestored(_),
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("could not be put back"), "{err}");
        assert_eq!(std::fs::read_to_string(&log).expect("log"), "run\n");
    }

    #[tokio::test]
    async fn backup_keeps_the_replaced_file_each_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = resource(dir.path());
        r.backup = true;
        let bak = dir.path().join("app.conf.bak");
        reconcile(&r, "v1\n", Options::default()).await.expect("ok");
        assert!(!bak.exists(), "no predecessor, no backup");
        std::fs::set_permissions(&r.dest, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        reconcile(&r, "v2\n", Options::default()).await.expect("ok");
        assert_eq!(std::fs::read_to_string(&bak).expect("bak"), "v1\n");
        assert_eq!(mode_of(&bak), 0o600);
        reconcile(&r, "v3\n", Options::default()).await.expect("ok");
        assert_eq!(std::fs::read_to_string(&bak).expect("bak"), "v2\n");
        assert_eq!(
            reconcile(&r, "v3\n", Options::default()).await.expect("ok"),
            Outcome::InSync
        );
        assert_eq!(std::fs::read_to_string(&bak).expect("bak"), "v2\n");
        assert_eq!(entries(dir.path()), ["app.conf", "app.conf.bak"]);
    }

    #[tokio::test]
    async fn missing_directories_are_created_only_when_asked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = resource(dir.path());
        r.dest = dir.path().join("a/b/app.conf");
        let err = reconcile(&r, "v1\n", Options::default())
            .await
            .expect_err("no directory");
        let message = err.to_string();
        assert!(message.contains("a/b does not exist"), "{message}");
        assert!(message.contains("create_dest_dirs"), "{message}");
        assert!(!dir.path().join("a").exists());
        r.create_dest_dirs = true;
        reconcile(&r, "v1\n", Options::default()).await.expect("ok");
        assert_eq!(std::fs::read_to_string(&r.dest).expect("dest"), "v1\n");
        assert_eq!(mode_of(&dir.path().join("a")), 0o755);
        assert_eq!(mode_of(&dir.path().join("a/b")), 0o755);
        std::fs::write(dir.path().join("file"), "").expect("write");
        r.dest = dir.path().join("file/app.conf");
        let err = reconcile(&r, "v1\n", Options::default())
            .await
            .expect_err("a file in the way");
        assert!(err.to_string().contains("Not a directory"), "{err}");
    }

    #[tokio::test]
    async fn invalid_output_stages_and_runs_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = resource(dir.path());
        std::fs::write(&r.dest, "{}\n").expect("write");
        let ran = dir.path().join("ran");
        r.output_format = Some(OutputFormat::Json);
        r.check_cmd = Some(format!("touch {}", ran.display()));
        r.reload_cmd = Some(format!("touch {}", ran.display()));
        let err = reconcile(&r, "{\"a\": }\n", Options::default())
            .await
            .expect_err("not JSON");
        assert!(matches!(err, ReconcileError::Format { .. }), "{err}");
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        assert_eq!(std::fs::read_to_string(&r.dest).expect("dest"), "{}\n");
        assert!(!ran.exists(), "no command ran");
        assert_eq!(entries(dir.path()), ["app.conf"]);
        reconcile(&r, "{\"a\": 1}\n", Options::default())
            .await
            .expect("valid JSON goes in");
        assert_eq!(
            std::fs::read_to_string(&r.dest).expect("dest"),
            "{\"a\": 1}\n"
        );
    }

    #[test]
    fn md5_matches_md5sum() {
        assert_eq!(md5_hex(b"hello\n"), "b1946ac92492d2347c6235b4d2611184");
    }

    #[tokio::test]
    async fn a_destination_in_a_directory_with_spaces_is_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spaced = dir.path().join("my dir");
        std::fs::create_dir(&spaced).expect("mkdir");
        let mut r = resource(&spaced);
        r.check_cmd = Some("grep -q v1 {{.src}}".into());
        reconcile(&r, "v1\n", Options::default())
            .await
            .expect("checked and written");
        assert_eq!(std::fs::read_to_string(&r.dest).expect("dest"), "v1\n");
    }

    #[test]
    fn a_secret_diff_shows_where_lines_changed_and_nothing_they_hold() {
        let diff = TextDiff::from_lines("user=app\npassword=old\n", "user=app\npassword=new\n")
            .unified_diff()
            .header("a", "b")
            .to_string();
        let shown = masked(&diff);
        assert!(
            !shown.contains("old") && !shown.contains("new") && !shown.contains("app"),
            "{shown}"
        );
        assert!(shown.contains("@@ -1,2 +1,2 @@"), "{shown}");
        assert!(
            shown.contains("-<secret line>") && shown.contains("+<secret line>"),
            "{shown}"
        );
    }

    #[test]
    fn output_formats_accept_valid_text_and_name_the_place_of_a_fault() {
        assert_eq!(OutputFormat::Json.validate("{\"a\": [1, 2]}"), Ok(()));
        assert_eq!(OutputFormat::Yaml.validate("a:\n  - 1\n"), Ok(()));
        assert_eq!(OutputFormat::Toml.validate("[a]\nb = 1\n"), Ok(()));
        let json = OutputFormat::Json.validate("{\"a\": }").expect_err("json");
        assert!(json.contains("line 1 column 7"), "{json}");
        let yaml = OutputFormat::Yaml
            .validate("a: [1\nb: 2\n")
            .expect_err("yaml");
        assert!(yaml.contains("line"), "{yaml}");
        let toml = OutputFormat::Toml
            .validate("a = 1\na = 2\n")
            .expect_err("toml");
        assert!(toml.contains("line 2"), "{toml}");
        assert!("xml".parse::<OutputFormat>().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn file_work_abandoned_at_a_stop_hears_it_was_given_up() {
        let (ask_stop, stop) = tokio::sync::watch::channel(false);
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (told, heard) = std::sync::mpsc::channel();
        // Work stuck (a hung filesystem) until released; it says what it hears before its swap.
        let work = off_the_runtime_then_close(&stop, move |given_up| {
            let _ = started_tx.send(());
            let _ = released.recv();
            let _ = told.send(given_up());
            ((), Replaced::default())
        });
        let stop_and_let_time_pass = async {
            started.recv().await;
            ask_stop.send(true).expect("a stop");
            // The clock stands still while a blocking task runs; it is moved by hand, in steps,
            // so the grace runs out wherever its timer started.
            loop {
                tokio::time::advance(Duration::from_millis(100)).await;
            }
        };
        let answer = tokio::select! {
            biased;
            answer = work => answer,
            () = stop_and_let_time_pass => unreachable!("the loop never ends"),
        };
        assert!(answer.is_none(), "abandoned once the grace ran out");
        release.send(()).expect("the work waits");
        assert_eq!(
            heard.recv().ok(),
            Some(true),
            "the work, back after its batch gave up, is told so and swaps nothing in"
        );
    }
}
