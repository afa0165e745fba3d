//! The controller of one store group: the resources that read one store, with that store's
//! snapshot and watch.
//!
//! It is level-triggered: whatever woke it (start, a watch event, a settled wait, a retry, a
//! resync), it brings each affected resource from the current snapshot to the file on disk,
//! and doing so twice changes nothing. The loop is
//!
//! ```text
//! watch ─► apply to the snapshot ─► settle (wait) ─► render (off-thread, limited) ─► reconcile ─► retry
//! ```
//!
//! with a full resync every `--interval` as a safety net. A store that cannot be reached, or
//! refuses, leaves every file as it is and is tried again with jittered backoff, slower for a
//! refusal than for a store out of reach ([`retry::Pace`]); a resource whose sync
//! failed for a reason that may pass is tried again on its own backoff, without waiting for
//! new data. A panic anywhere in the loop is caught by [`Controller::supervise`], reported
//! (`/ready` answers 503 until the loop has synced again) and the loop starts over.

mod render;
pub(crate) mod retry;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};

pub(crate) use render::{
    NotRendered, RenderFailure, RenderLimits, Rendered, TooFewKeys, too_few_keys,
};
use render::{ROUND_GRACE, Renders};
use retry::{Backoff, Retries, StoreBackoff};

use crate::exec::Swaps;
use crate::notify;
use crate::reconcile::{self, Options, Outcome, ReconcileError};
use crate::report::{self, Guards, Outage};
use crate::resource::Resource;
use crate::secrets::GroupSecrets;
use crate::status::Status;
use crate::store::backend::Backend;
use crate::store::{Snapshot, Store, StoreError, WatchEvent, WatchStream, under_any};
use crate::template::Renderer;
use crate::wait::Settling;

/// Longest a render may take unless the settings or the resource say otherwise.
pub const DEFAULT_RENDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest output a render may produce unless the settings or the resource say otherwise.
pub const DEFAULT_RENDER_MAX_SIZE: u64 = 256 * 1024 * 1024;

/// A watch that lasted this long counts as established: when it ends, the next one is
/// opened at once.
const STABLE_WATCH: Duration = Duration::from_secs(5);

/// A resource ready to render: its settings, its parsed template and its render limits.
pub(crate) struct Prepared {
    /// The resource.
    pub(crate) resource: Resource,
    /// Its template, parsed once.
    pub(crate) renderer: Renderer,
    /// How long its render may take and how large its output may be.
    pub(crate) limits: RenderLimits,
}

/// How a controller syncs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SyncOptions {
    /// What reconciling does (`--noop`, `--sync-only`, ...).
    pub(crate) reconcile: Options,
    /// Time between full resyncs (`--interval`).
    pub(crate) interval: Duration,
    /// Poll at `interval` even when the store can watch (no `--watch`).
    pub(crate) polling: bool,
}

/// The resources that read from one store, with that store's client, snapshot and watch.
pub(crate) struct Controller {
    store: Box<dyn Store>,
    /// The store settings the controller was made for; a SIGHUP keeps its client when they
    /// are unchanged.
    backend: Backend,
    /// The store instance, as `/status` and `/metrics` name it.
    instance: String,
    prepared: Vec<Arc<Prepared>>,
    /// Union of all resources' key prefixes: what is fetched and watched.
    prefixes: Vec<String>,
    snapshot: Arc<Snapshot>,
    options: SyncOptions,
    outage: Outage,
    /// The resources held back by their `min_keys`, so that each change is logged once.
    guards: Guards,
    /// The store's credentials and the values under `secret_prefixes`, masked in all output.
    secrets: GroupSecrets,
    /// The prefixes of the secret resources, whose values are secrets.
    secret_prefixes: Vec<String>,
    /// Where syncs are recorded for `--listen`.
    status: Status,
    /// Told once, after the first full sync.
    first_sync: Option<mpsc::UnboundedSender<()>>,
    /// Told after each sync that swapped a file, in exec mode.
    swaps: Option<Swaps>,
    /// The snapshot is current (handed over on SIGHUP): the first sync renders from it and
    /// the watch resumes where the previous one stopped, without reading the store again.
    warm: bool,
    renders: Renders,
    retries: Retries,
    /// The resources whose destination was swapped in but not reloaded (their reload failed,
    /// and none has succeeded since): their next sync runs the reload even when the file is
    /// in sync, or a retry would find nothing to do.
    reloads_owed: BTreeSet<usize>,
    /// A `--onetime` run: a failure is reported, not tried again.
    one_shot: bool,
}

impl Controller {
    /// A controller for `prepared`, reading `store` (made from `backend`).
    pub(crate) fn new(
        store: Box<dyn Store>,
        backend: Backend,
        prepared: Vec<Arc<Prepared>>,
        options: SyncOptions,
        status: Status,
    ) -> Controller {
        let instance = backend.instance();
        Controller {
            prefixes: crate::plan::covering_prefixes(
                prepared.iter().flat_map(|p| p.resource.keys.iter()),
            ),
            secrets: GroupSecrets::new(backend.credentials()),
            secret_prefixes: crate::plan::covering_prefixes(
                prepared
                    .iter()
                    .filter(|p| p.resource.secret)
                    .flat_map(|p| p.resource.keys.iter()),
            ),
            renders: Renders::new(prepared.len()),
            retries: Retries::default(),
            reloads_owed: BTreeSet::new(),
            one_shot: false,
            outage: Outage::new(instance.clone(), status.clone()),
            guards: Guards::default(),
            instance,
            backend,
            warm: false,
            options,
            store,
            prepared,
            snapshot: Arc::new(Snapshot::default()),
            status,
            first_sync: None,
            swaps: None,
        }
    }

    /// A controller for a new set of resources on this controller's store (a SIGHUP with
    /// unchanged store settings): the client, and with it where the watch stopped, is kept,
    /// and so is the snapshot when the prefixes are the same.
    pub(crate) fn hand_over(
        self,
        backend: Backend,
        prepared: Vec<Arc<Prepared>>,
        options: SyncOptions,
        status: Status,
    ) -> Controller {
        let mut next = Controller::new(self.store, backend, prepared, options, status);
        // Values the store held before stay masked, as the files on disk may hold them.
        next.secrets = self.secrets;
        if next.prefixes == self.prefixes {
            next.snapshot = self.snapshot;
            next.warm = true;
        }
        next
    }

    /// The store settings this controller reads with.
    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The store instance, as `/status` and `/metrics` name it.
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// The resources this controller syncs.
    pub(crate) fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.prepared.iter().map(|member| &member.resource)
    }

    /// The destinations swapped in whose reload failed, with none succeeding since.
    pub(crate) fn reloads_owed(&self) -> impl Iterator<Item = &Path> {
        self.reloads_owed
            .iter()
            .map(|index| self.prepared[*index].resource.dest.as_path())
    }

    /// Marks the resources writing one of `dests` as owing a reload (a SIGHUP's new
    /// resources, from the controllers before it): the file in place was never reloaded.
    pub(crate) fn owe_reloads(&mut self, dests: &BTreeSet<PathBuf>) {
        for (index, member) in self.prepared.iter().enumerate() {
            if dests.contains(&member.resource.dest) {
                self.reloads_owed.insert(index);
            }
        }
    }

    /// One fetch, every resource once. Returns how many resources failed and how many
    /// would change (in noop mode).
    pub(crate) async fn onetime(&mut self) -> Tally {
        self.one_shot = true;
        if self.prepared.is_empty() {
            return Tally::default();
        }
        match self.read_store().await {
            Ok(snapshot) => self.snapshot = Arc::new(snapshot),
            Err(e) => {
                tracing::error!(
                    "{} store {}: {e}",
                    self.store.name(),
                    report::failing(e.kind())
                );
                return Tally::failed(self.prepared.len());
            }
        }
        let (_, never_stopped) = watch::channel(false);
        let mut shutdown = Shutdown::new(never_stopped);
        let all = (0..self.prepared.len()).collect();
        let tally = match self
            .renders
            .round(all, &self.prepared, &self.snapshot, None, &mut shutdown)
            .await
        {
            Some(rendered) => self.commit(rendered, &shutdown).await,
            None => Tally::failed(self.prepared.len()),
        };
        // The process exits once its controllers are done: what the run read is left to the
        // exit, not freed key by key first (10,000 keys are 20,000 frees, 2 ms before the exit).
        std::mem::forget(Arc::clone(&self.snapshot));
        tally
    }

    /// Runs the controller until `shutdown`, starting it over after a panic; `first_sync` is
    /// told after the first full sync, `swaps` (in exec mode) after each sync that swapped a
    /// file. Returns the controller, whose store client a SIGHUP may hand to the next
    /// generation.
    pub(crate) async fn supervise(
        mut self,
        mut shutdown: Shutdown,
        first_sync: mpsc::UnboundedSender<()>,
        swaps: Option<Swaps>,
        status: Status,
    ) -> Controller {
        self.first_sync = Some(first_sync);
        self.swaps = swaps;
        let mut backoff = Backoff::store();
        loop {
            let run = AssertUnwindSafe(self.run(&mut shutdown))
                .catch_unwind()
                .await;
            let Err(panic) = run else {
                return self;
            };
            let message = panic_text(panic.as_ref());
            tracing::error!(
                "{}: the store's loop failed unexpectedly ({message}); please report this. \
                 Starting it over with a full read.",
                self.instance
            );
            status.loop_failed(&self.instance, &message);
            notify::status(&format!(
                "{}: loop restarted after a failure: {message}",
                self.instance
            ));
            // Whatever the loop was in the middle of is not to be trusted: read everything
            // again.
            self.warm = false;
            self.snapshot = Arc::new(Snapshot::default());
            self.renders = Renders::new(self.prepared.len());
            if !backoff.wait(&mut shutdown).await {
                return self;
            }
        }
    }

    /// Follows the store's changes until shutdown, or polls it every `--interval` when
    /// asked to or when it cannot watch.
    async fn run(&mut self, shutdown: &mut Shutdown) {
        // Each wait is paced by the kind of the failure before it, which the outage holds.
        let mut backoff = StoreBackoff::new();
        if std::mem::take(&mut self.warm) {
            self.sync_all(shutdown).await;
            self.full_sync_done();
        } else {
            while !self.resync(shutdown).await {
                if !backoff.wait(self.outage.kind(), shutdown).await {
                    return;
                }
            }
        }
        backoff.reset();
        // One timer for the whole run: a watch that is opened again and again (a flapping
        // link, a proxy's idle timeout) must not keep the safety resync from ever running.
        let start = tokio::time::Instant::now();
        let mut resync = match start.checked_add(self.options.interval) {
            Some(first) => tokio::time::interval_at(first, self.options.interval),
            None => tokio::time::interval_at(start, self.options.interval),
        };
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Resources that name no key (confd allows them) give the store nothing to watch.
        let mut watching = !self.options.polling && !self.prefixes.is_empty();
        let mut opened_before = false;
        loop {
            let stream = if watching {
                match self.store.watch(&self.prefixes, &self.snapshot).await {
                    Ok(Some(stream)) => {
                        self.outage.ended();
                        // The watch opened is the store's answer: one that comes back with
                        // nothing changed sends no event to say so.
                        self.status
                            .store_answered(&self.instance, self.store.name(), None);
                        if std::mem::replace(&mut opened_before, true) {
                            self.status
                                .watch_reopened(&self.instance, self.store.name());
                        }
                        Some(stream)
                    }
                    Ok(None) => {
                        tracing::info!(
                            "the {} store cannot watch; polling every {}",
                            self.store.name(),
                            humantime::format_duration(self.options.interval)
                        );
                        watching = false;
                        None
                    }
                    Err(e) => {
                        self.outage.began(self.store.name(), &e);
                        if !backoff.wait(Some(e.kind()), shutdown).await {
                            return;
                        }
                        continue;
                    }
                }
            } else {
                None
            };
            let opened = now();
            let delivered = match self.follow(stream, &mut resync, shutdown).await {
                ControlFlow::Break(()) => return,
                ControlFlow::Continue(delivered) => delivered,
            };
            // A stream that ends as soon as it is opened, having delivered nothing, is retried
            // with the same backoff as a failed attempt, not in a tight loop; at the pace of
            // the failure it reported, if it reported one.
            if !delivered && now() - opened < STABLE_WATCH {
                if !backoff.wait(self.outage.kind(), shutdown).await {
                    return;
                }
            } else {
                backoff.reset();
            }
        }
    }

    /// Applies a watch stream's events (none when polling) until it ends (`Continue`: watch
    /// again, saying whether it delivered any event) or until shutdown (`Break`). Meanwhile renders resources whose wait is over and
    /// retries failed ones when due, commits renders that outlived their round, and reads
    /// everything again at every tick of `resync` (sooner, with backoff, after a failed read).
    async fn follow(
        &mut self,
        mut stream: Option<WatchStream>,
        resync: &mut tokio::time::Interval,
        shutdown: &mut Shutdown,
    ) -> ControlFlow<(), bool> {
        let mut settling = Settling::default();
        let mut delivered = false;
        let mut read_again: Option<Instant> = None;
        let mut read_backoff = StoreBackoff::new();
        loop {
            let settled_due = settling.next_due();
            let retry_due = self.retries.next_due();
            tokio::select! {
                event = next_event(&mut stream) => {
                    let Some(event) = event else {
                        return ControlFlow::Continue(delivered);
                    };
                    delivered |= event.is_ok();
                    let touched = self.apply(event);
                    let dirty = self.settle(touched, &mut settling);
                    self.sync_round(dirty, stream.as_mut(), &mut settling, shutdown).await;
                }
                () = sleep_until(settled_due), if settled_due.is_some() => {
                    let due = settling.take_due(now());
                    self.sync_round(due, stream.as_mut(), &mut settling, shutdown).await;
                }
                () = sleep_until(retry_due), if retry_due.is_some() => {
                    let mut due = self.retries.due(now()).into_iter().collect();
                    self.join_shared_reloads(&mut due);
                    self.sync_round(due, stream.as_mut(), &mut settling, shutdown).await;
                }
                batch = self.renders.next_late() => {
                    self.commit(batch, shutdown).await;
                    let deferred = self.renders.take_deferred();
                    self.sync_round(deferred, stream.as_mut(), &mut settling, shutdown).await;
                }
                _ = resync.tick(), if read_again.is_none() => {
                    read_again = self.read_again(stream.as_mut(), &mut settling, &mut read_backoff, shutdown).await;
                }
                () = sleep_until(read_again), if read_again.is_some() => {
                    read_again = self.read_again(stream.as_mut(), &mut settling, &mut read_backoff, shutdown).await;
                }
                () = shutdown.wait() => return ControlFlow::Break(()),
            }
        }
    }

    /// The safety resync: applies what is queued, then reads everything again and syncs
    /// every resource. Returns when to try again if the store could not be read.
    async fn read_again(
        &mut self,
        stream: Option<&mut WatchStream>,
        settling: &mut Settling,
        backoff: &mut StoreBackoff,
        shutdown: &mut Shutdown,
    ) -> Option<Instant> {
        // What is queued is applied first. Changes still in flight that the read already
        // covers are recognised by their revision and skipped.
        if let Some(stream) = stream {
            while let Ok(event) = stream.try_recv() {
                self.apply(event);
            }
        }
        if self.resync(shutdown).await {
            settling.clear();
            backoff.reset();
            None
        } else {
            Some(now() + backoff.next_delay(self.outage.kind()))
        }
    }

    /// Adds to `due` the resources waiting for a retry that owe a reload with the same
    /// command as one of `due`: the command then runs once for all of them, as it did when
    /// it failed, rather than once per resource on timers of their own.
    fn join_shared_reloads(&mut self, due: &mut BTreeSet<usize>) {
        let commands: BTreeSet<&str> = due
            .iter()
            .filter_map(|index| self.prepared[*index].resource.reload_cmd.as_deref())
            .collect();
        let joining: Vec<usize> = self
            .reloads_owed
            .iter()
            .copied()
            .filter(|index| !due.contains(index) && self.retries.is_scheduled(*index))
            .filter(|index| {
                self.prepared[*index]
                    .resource
                    .reload_cmd
                    .as_deref()
                    .is_some_and(|command| commands.contains(command))
            })
            .collect();
        for index in joining {
            self.retries.attempting(index, now());
            due.insert(index);
        }
    }

    /// Reconciles the `dirty` resources as one round. Every event already queued is applied
    /// first, so no render starts from a state that a queued change has superseded, and a
    /// burst of changes gives each affected resource one render with the final values.
    /// Resources with a `wait` that a queued change touches go to `settling` instead.
    async fn sync_round(
        &mut self,
        mut dirty: BTreeSet<usize>,
        stream: Option<&mut WatchStream>,
        settling: &mut Settling,
        shutdown: &mut Shutdown,
    ) {
        if let Some(stream) = stream {
            while let Ok(event) = stream.try_recv() {
                let touched = self.apply(event);
                dirty.extend(self.settle(touched, settling));
            }
        }
        if dirty.is_empty() {
            return;
        }
        let round = self.with_file_mates(dirty);
        if let Some(rendered) = self
            .renders
            .round(
                round,
                &self.prepared,
                &self.snapshot,
                Some(ROUND_GRACE),
                shutdown,
            )
            .await
        {
            self.commit(rendered, shutdown).await;
        }
    }

    /// Renders and reconciles every resource as one batch, but those waiting for a retry.
    async fn sync_all(&mut self, shutdown: &mut Shutdown) {
        // A resource waiting for its retry is synced then, from the snapshot as it is then,
        // with the other templates of its file: syncing it here too would run a failing
        // reload command at every interval, whatever its backoff says.
        let retrying = self.with_file_mates(
            (0..self.prepared.len())
                .filter(|index| self.retries.is_scheduled(*index))
                .collect(),
        );
        let all = (0..self.prepared.len())
            .filter(|index| !retrying.contains(index))
            .collect();
        if let Some(rendered) = self
            .renders
            .round(
                all,
                &self.prepared,
                &self.snapshot,
                Some(ROUND_GRACE),
                shutdown,
            )
            .await
        {
            self.commit(rendered, shutdown).await;
        }
    }

    /// `indexes` and the other templates of their resource files, which are swapped together.
    fn with_file_mates(&self, indexes: BTreeSet<usize>) -> BTreeSet<usize> {
        let files: BTreeSet<&Path> = indexes
            .iter()
            .map(|index| self.prepared[*index].resource.file.as_path())
            .collect();
        let mut all = indexes;
        all.extend(
            self.prepared
                .iter()
                .enumerate()
                .filter(|(_, member)| files.contains(member.resource.file.as_path()))
                .map(|(index, _)| index),
        );
        all
    }

    /// Of the `touched` resources, returns those that render now; those with a `wait` are
    /// recorded in `settling` to render once their data has settled.
    fn settle(&self, touched: BTreeSet<usize>, settling: &mut Settling) -> BTreeSet<usize> {
        let at = now();
        touched
            .into_iter()
            .filter(|index| match self.prepared[*index].resource.wait {
                Some(wait) => {
                    settling.changed(*index, wait, at);
                    false
                }
                None => true,
            })
            .collect()
    }

    /// Applies one watch event to the snapshot and returns the indexes of the resources whose
    /// keys it changed.
    fn apply(&mut self, event: Result<WatchEvent, StoreError>) -> BTreeSet<usize> {
        let mut changed: BTreeSet<String> = BTreeSet::new();
        match event {
            Err(e) => self.outage.began(self.store.name(), &e),
            // Changes the snapshot's read already holds (in flight during a resync) are old.
            Ok(WatchEvent::Changes {
                revision: Some(revision),
                ..
            }) if self.snapshot.revision.is_some_and(|read| revision <= read) => {}
            Ok(WatchEvent::Changes { changes, revision }) => {
                self.status
                    .store_answered(&self.instance, self.store.name(), revision);
                let snapshot = Arc::make_mut(&mut self.snapshot);
                for change in changes {
                    changed.insert(change.key().to_string());
                    snapshot.apply(change);
                }
            }
            Ok(WatchEvent::Replace(replacement)) => {
                self.status
                    .store_answered(&self.instance, self.store.name(), replacement.revision);
                changed.extend(changed_keys(&self.snapshot, &replacement));
                self.snapshot = Arc::new(replacement);
            }
        }
        if !changed.is_empty() {
            tracing::debug!(
                "{} {} changed",
                changed.len(),
                crate::plan::plural(changed.len(), "key", "keys")
            );
        }
        self.prepared
            .iter()
            .enumerate()
            .filter(|(_, prepared)| {
                changed
                    .iter()
                    .any(|key| under_any(key, &prepared.resource.keys))
            })
            .map(|(index, _)| index)
            .collect()
    }

    /// Everything under the group's prefixes. A group whose resources name no key reads
    /// nothing: its snapshot is empty and the store is never asked. (`&mut`: the store client
    /// is `Send` but not `Sync`.)
    async fn read_store(&mut self) -> Result<Snapshot, StoreError> {
        if self.prefixes.is_empty() {
            return Ok(Snapshot::default());
        }
        self.store.fetch(&self.prefixes).await
    }

    /// Fetches everything again and syncs every resource. Returns false when the store could
    /// not be read (the files on disk are left as they are).
    async fn resync(&mut self, shutdown: &mut Shutdown) -> bool {
        match self.read_store().await {
            Ok(snapshot) => {
                self.outage.ended();
                self.status
                    .store_answered(&self.instance, self.store.name(), snapshot.revision);
                self.snapshot = Arc::new(snapshot);
                self.sync_all(shutdown).await;
                self.full_sync_done();
                true
            }
            Err(e) => {
                self.outage.began(self.store.name(), &e);
                false
            }
        }
    }

    /// Records a completed full sync: tells the process, once, that every resource has been
    /// synced, and clears a failure of the loop from `/ready`.
    fn full_sync_done(&mut self) {
        self.status.loop_running(&self.instance);
        if let Some(first_sync) = self.first_sync.take() {
            // The process stops listening only when it ends.
            let _ = first_sync.send(());
        }
    }

    /// Masks the secret values of the snapshot as it now is.
    fn update_secrets(&mut self) {
        let values: Vec<&str> = self
            .secret_prefixes
            .iter()
            .flat_map(|prefix| {
                self.snapshot
                    .starting_with(prefix)
                    .map(|(_, value)| value.as_str())
            })
            .collect();
        self.secrets.update(&values);
    }

    /// Reconciles the `rendered` resources as one batch (see [`reconcile::reconcile_batch`]),
    /// reports every result and schedules the retries of failures that may pass. Returns how
    /// many failed and how many would change.
    async fn commit(&mut self, rendered: Vec<Rendered>, shutdown: &Shutdown) -> Tally {
        // Before anything is reported or run: a command's output, a render's error or a diff
        // may show the newest values.
        self.update_secrets();
        let failed_files: BTreeSet<&Path> = rendered
            .iter()
            .filter(|r| r.content.is_err())
            .map(|r| self.prepared[r.index].resource.file.as_path())
            .collect();
        let items: Vec<reconcile::Item> = rendered
            .iter()
            .filter_map(|r| {
                r.content.as_ref().ok().map(|content| reconcile::Item {
                    resource: &self.prepared[r.index].resource,
                    rendered: content,
                    md5: r.md5.as_deref(),
                    reload_owed: self.reloads_owed.contains(&r.index),
                })
            })
            .collect();
        let results = reconcile::reconcile_batch(
            &items,
            &failed_files,
            self.options.reconcile,
            &shutdown.signalled,
        )
        .await;
        // The reload commands of the batch have run: the service hears of it after them.
        if let Some(swaps) = &self.swaps
            && results.iter().any(|result| match result {
                Ok(outcome) => *outcome == Outcome::Updated,
                Err(e) => e.swapped(),
            })
        {
            swaps.swapped();
        }
        let mut results = results.into_iter();
        let mut tally = Tally::default();
        for r in &rendered {
            let resource = &self.prepared[r.index].resource;
            let too_few = match &r.content {
                Err(NotRendered::TooFewKeys(too_few)) => Some(*too_few),
                _ => None,
            };
            self.guards.record(r.index, resource, too_few);
            let outcome = match &r.content {
                Err(NotRendered::Failed(failure)) => Err(report::Failure::Render(failure)),
                Err(NotRendered::TooFewKeys(too_few)) => Err(report::Failure::TooFewKeys(*too_few)),
                Ok(_) => match results.next() {
                    Some(Ok(outcome)) => Ok(outcome),
                    Some(Err(e)) => Err(report::Failure::Reconcile(e)),
                    None => Ok(Outcome::InSync),
                },
            };
            let may_pass = match &outcome {
                Ok(_) | Err(report::Failure::TooFewKeys(_)) => false,
                Err(report::Failure::Render(failure)) => failure.may_pass,
                Err(report::Failure::Reconcile(e)) => may_pass(e),
            };
            match &outcome {
                Err(_) => tally.failed += 1,
                Ok(Outcome::WouldUpdate) => tally.would_change += 1,
                Ok(_) => {}
            }
            match &outcome {
                Err(report::Failure::Reconcile(e)) if e.swapped() => {
                    self.reloads_owed.insert(r.index);
                }
                Ok(Outcome::Updated | Outcome::Reloaded)
                | Err(report::Failure::Reconcile(ReconcileError::Check {
                    owed_reload: Some(Ok(())),
                    ..
                })) => {
                    self.reloads_owed.remove(&r.index);
                }
                _ if resource.reload_cmd.is_none() => {
                    self.reloads_owed.remove(&r.index);
                }
                _ => {}
            }
            let next_attempt = if may_pass && !self.one_shot {
                Some(self.retries.failed(r.index, now()))
            } else {
                self.retries.settled(r.index);
                None
            };
            report::synced(
                &self.status,
                resource,
                r,
                &outcome,
                self.options.reconcile,
                next_attempt,
            );
        }
        tally
    }
}

/// What one run of every resource came to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Resources that failed.
    pub(crate) failed: usize,
    /// Resources whose destination would change (in noop mode).
    pub(crate) would_change: usize,
}

impl Tally {
    fn failed(failed: usize) -> Tally {
        Tally {
            failed,
            would_change: 0,
        }
    }
}

/// True for a reconcile failure that may pass with no change of data: a file operation or a
/// reload that failed. A check that refused the content, or content not in its format, fails
/// the same way until the data or the template changes.
fn may_pass(error: &ReconcileError) -> bool {
    match error {
        ReconcileError::Io { .. }
        | ReconcileError::Reload { .. }
        | ReconcileError::RolledBack { .. }
        // The new content waits for new data, but the reload of the file in place does not.
        | ReconcileError::Check {
            owed_reload: Some(Err(_)),
            ..
        } => true,
        ReconcileError::Check { .. }
        | ReconcileError::Format { .. }
        | ReconcileError::Held { .. } => false,
    }
}

/// The next event of `stream`; never when there is no stream (polling).
async fn next_event(stream: &mut Option<WatchStream>) -> Option<Result<WatchEvent, StoreError>> {
    match stream {
        Some(stream) => stream.recv().await,
        None => std::future::pending().await,
    }
}

/// The message a panic was raised with, where it has one.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

/// The current time on the runtime's clock, which tests can pause and advance.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Returns at `due`; never without one.
pub(crate) async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// Keys whose value differs between two snapshots, including keys only one of them has.
fn changed_keys<'a>(old: &'a Snapshot, new: &'a Snapshot) -> impl Iterator<Item = String> + 'a {
    let removed_or_changed = old
        .entries
        .iter()
        .filter(|(key, value)| new.entries.get(*key) != Some(*value))
        .map(|(key, _)| key.clone());
    let added = new
        .entries
        .keys()
        .filter(|key| !old.entries.contains_key(*key))
        .cloned();
    removed_or_changed.chain(added)
}

/// The request to stop, as seen by a controller: SIGINT, SIGTERM, or a SIGHUP that replaces
/// the controllers.
pub(crate) struct Shutdown {
    signalled: watch::Receiver<bool>,
}

impl Shutdown {
    /// A shutdown that comes when `signalled` turns true.
    pub(crate) fn new(signalled: watch::Receiver<bool>) -> Shutdown {
        Shutdown { signalled }
    }

    /// Returns once the stop has been requested (at once if it already has).
    pub(crate) async fn wait(&mut self) {
        // An error means the sender is gone: nobody can ask for a stop any more.
        if self
            .signalled
            .wait_for(|signalled| *signalled)
            .await
            .is_err()
        {
            std::future::pending::<()>().await;
        }
    }
}
