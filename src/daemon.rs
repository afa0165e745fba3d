//! The run loop: once (`--onetime`), on a timer (`--interval`), or on every change the store
//! reports (`--watch`).
//!
//! The loop is level-triggered: whatever woke it, it brings each affected resource from the
//! current snapshot to the file on disk, and doing so twice changes nothing. One snapshot is
//! kept for the whole process and all resources read from it, so the store is read once, not
//! once per resource; watch events are applied to it in place.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::notify;
use crate::reconcile::{self, Options, Outcome, ReconcileError};
use crate::resource::{self, Resource, ResourceError};
use crate::settings::{RunMode, Settings};
use crate::status::{self, Status, SyncReport, SyncResult};
use crate::store::backend::{self, Backend};
use crate::store::{Snapshot, Store, StoreError, WatchEvent, WatchStream, under_any};
use crate::template::{Renderer, SharedResults, View};
use crate::wait::Settling;

/// First wait after a store failure; doubled on each further failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between attempts to reach a store.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Mode of a file rendered from a store of secrets whose resource sets none.
const SECRET_MODE: u32 = 0o600;
/// A watch that lasted this long counts as established: when it ends, the next one is
/// opened at once.
const STABLE_WATCH: Duration = Duration::from_secs(5);

/// A resource ready to render: its settings and its parsed template.
struct Prepared {
    resource: Resource,
    renderer: Renderer,
}

/// Runs reconfd with `settings` until done (onetime) or until SIGINT/SIGTERM. In the daemon
/// modes SIGHUP reads the settings, conf.d and templates again.
pub async fn run(settings: Settings) -> ExitCode {
    let mut signals = match Signals::listen() {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!("cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = Status::new();
    if let Some(address) = settings.listen {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => {
                tracing::info!("serving metrics and status on http://{address}/");
                tokio::spawn(status::serve(listener, status.clone()));
            }
            Err(e) => {
                tracing::error!("--listen {address}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let plan = match Plan::build(&settings, Vec::new(), &status) {
        Ok(plan) => plan,
        Err(code) => return code,
    };
    if settings.mode == RunMode::Onetime {
        return onetime(plan, &mut signals).await;
    }
    let mut generation = Generation::start(plan, settings.mode);
    notify::start_watchdog();
    loop {
        tokio::select! {
            () = generation.first_synced() => {
                let summary = generation.summary();
                tracing::info!("first sync done: {summary}");
                status.set_ready();
                notify::ready(&summary);
            }
            _ = signals.terminate.recv() => break,
            _ = signals.interrupt.recv() => break,
            _ = signals.hangup.recv() => {
                tracing::info!("SIGHUP: reading the settings, conf.d and templates again");
                notify::reloading();
                match reread(&settings) {
                    Ok(new_settings) => {
                        let previous = generation.stop().await;
                        match Plan::build(&new_settings, previous, &status) {
                            Ok(plan) => {
                                generation = Generation::start(plan, new_settings.mode);
                                tracing::info!("SIGHUP: new settings applied");
                            }
                            // Validation succeeded a moment ago; only a store client that
                            // cannot be built now fails here.
                            Err(_) => return ExitCode::FAILURE,
                        }
                    }
                    Err(reason) => {
                        tracing::error!("SIGHUP: keeping the current settings: {reason}");
                        notify::ready(&generation.summary());
                    }
                }
            }
        }
    }
    // The loops finish the sync in progress (a swap, a reload) and then end.
    tracing::info!("stopping");
    notify::stopping();
    generation.stop().await;
    ExitCode::SUCCESS
}

/// Runs every group once; the exit status says whether every resource is in sync.
async fn onetime(plan: Plan, signals: &mut Signals) -> ExitCode {
    let mut failures = plan.failures;
    let mut tasks = JoinSet::new();
    for mut group in plan.groups {
        tasks.spawn(async move { group.onetime().await });
    }
    loop {
        tokio::select! {
            finished = tasks.join_next() => match finished {
                Some(Ok(group_failures)) => failures += group_failures,
                Some(Err(e)) => {
                    tracing::error!("a store's loop ended abnormally: {e}");
                    failures += 1;
                }
                None => break,
            },
            // Interrupted, a onetime run stops at its next step; a stage file being checked
            // is removed as it is dropped, and no destination is half-written.
            _ = signals.terminate.recv() => {
                tracing::error!("interrupted");
                return ExitCode::FAILURE;
            }
            _ = signals.interrupt.recv() => {
                tracing::error!("interrupted");
                return ExitCode::FAILURE;
            }
        }
    }
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The settings as the command line, environment and settings file give them now, if they
/// and every resource and template they name are usable; otherwise why not.
fn reread(current: &Settings) -> Result<Settings, String> {
    let settings = Settings::from_command_line().map_err(|e| e.to_string())?;
    if settings.mode == RunMode::Onetime {
        return Err("--onetime cannot be switched on in a running daemon".to_string());
    }
    if settings.confdir != current.confdir {
        tracing::info!("SIGHUP: confdir is now {}", settings.confdir.display());
    }
    let loaded =
        resource::load_all(&settings.confdir, &settings.prefix).map_err(|e| e.to_string())?;
    let (prepared, failures) = prepare_resources(loaded);
    if failures > 0 {
        return Err(format!(
            "{failures} resources or templates are unusable (logged above)"
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

/// The groups to run for one set of settings, and how many resources could not be loaded.
struct Plan {
    groups: Vec<Group>,
    failures: usize,
}

impl Plan {
    /// Loads the resources and templates of `settings` and groups them by store. Groups of
    /// `previous` whose store settings are unchanged hand over their store client (and with
    /// it where their watches stopped) and, when they read the same prefixes, their snapshot.
    /// Unusable settings are logged and give the exit status.
    fn build(
        settings: &Settings,
        mut previous: Vec<Group>,
        status: &Status,
    ) -> Result<Plan, ExitCode> {
        let loaded = match resource::load_all(&settings.confdir, &settings.prefix) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!("{e}");
                return Err(ExitCode::from(2));
            }
        };
        let (prepared, mut failures) = prepare_resources(loaded);
        if prepared.is_empty() && failures == 0 {
            tracing::warn!(
                "no template resources in {}",
                settings.confdir.join("conf.d").display()
            );
        }
        let options = Options {
            noop: settings.noop,
            sync_only: settings.sync_only,
            keep_stage_file: settings.keep_stage_file,
            secret: false,
        };
        // The global store is opened even if no resource reads it, so that unusable settings
        // are reported the same way whatever the confdir holds.
        let mut global_store = match settings.backend.as_ref().map(backend::open).transpose() {
            Ok(store) => store,
            Err(message) => {
                tracing::error!("{message}");
                return Err(ExitCode::from(2));
            }
        };
        let mut groups = Vec::new();
        for (backend, members) in by_store(prepared, settings.backend.as_ref()) {
            let Some(backend) = backend else {
                for member in &members {
                    tracing::error!(
                        "{}: no store to read from: give --backend (and --file for the file \
                         store) or a [backend] table",
                        member.resource.file.display()
                    );
                }
                return Err(ExitCode::from(2));
            };
            // Files rendered from a store of secrets are private unless their resource says
            // otherwise, and their content stays out of logs and diffs.
            let secret = backend.holds_secrets();
            let members: Vec<Prepared> = members
                .into_iter()
                .map(|mut member| {
                    if secret {
                        member.resource.mode.get_or_insert(SECRET_MODE);
                    }
                    member.resource.wait = member.resource.wait.or(settings.wait);
                    member.resource.rollback |= settings.rollback;
                    member
                })
                .collect();
            let options = Options { secret, ..options };
            if let Some(index) = previous.iter().position(|group| group.backend == backend) {
                let old = previous.swap_remove(index);
                let mut group = Group::new(
                    old.store,
                    backend,
                    members,
                    options,
                    settings.interval,
                    status.clone(),
                );
                if group.prefixes == old.prefixes {
                    group.snapshot = old.snapshot;
                    group.warm = true;
                }
                groups.push(group);
                continue;
            }
            let opened = match global_store.take_if(|_| Some(&backend) == settings.backend.as_ref())
            {
                Some(store) => Ok(store),
                None => backend::open(&backend),
            };
            match opened {
                Ok(store) => groups.push(Group::new(
                    store,
                    backend,
                    members,
                    options,
                    settings.interval,
                    status.clone(),
                )),
                Err(message) => {
                    // Only the resources with this [backend] table are lost.
                    for member in &members {
                        tracing::error!("{}: [backend]: {message}", member.resource.file.display());
                    }
                    failures += members.len();
                }
            }
        }
        status.set_resources(groups.iter().flat_map(|group| {
            group.prepared.iter().map(|member| {
                (
                    member.resource.file.as_path(),
                    member.resource.dest.as_path(),
                )
            })
        }));
        Ok(Plan { groups, failures })
    }
}

/// The groups of one set of settings, running until stopped.
struct Generation {
    tasks: JoinSet<Group>,
    stop: watch::Sender<bool>,
    /// Receives a message from each group after its first full sync.
    first_syncs: mpsc::UnboundedReceiver<()>,
    unsynced: usize,
    /// The first sync was reported.
    announced: bool,
    resources: usize,
    stores: usize,
    failures: usize,
}

impl Generation {
    /// Starts every group of `plan` in `mode` (polling or watching).
    fn start(plan: Plan, mode: RunMode) -> Generation {
        let (stop, stopped) = watch::channel(false);
        let (synced, first_syncs) = mpsc::unbounded_channel();
        let stores = plan.groups.len();
        let resources = plan.groups.iter().map(|group| group.prepared.len()).sum();
        let mut tasks = JoinSet::new();
        for mut group in plan.groups {
            group.first_sync = Some(synced.clone());
            let mut shutdown = Shutdown {
                signalled: stopped.clone(),
            };
            tasks.spawn(async move {
                if mode == RunMode::Poll {
                    group.poll(&mut shutdown).await;
                } else {
                    group.watch(&mut shutdown).await;
                }
                group
            });
        }
        notify::status(&format!("reading {stores} stores"));
        Generation {
            tasks,
            stop,
            first_syncs,
            unsynced: stores,
            announced: false,
            resources,
            stores,
            failures: plan.failures,
        }
    }

    /// Returns once, when every group has completed its first full sync.
    async fn first_synced(&mut self) {
        if self.announced {
            return std::future::pending().await;
        }
        while self.unsynced > 0 {
            // A group that ended without syncing (it was stopped) never makes the daemon
            // ready.
            if self.first_syncs.recv().await.is_none() {
                return std::future::pending().await;
            }
            self.unsynced -= 1;
        }
        self.announced = true;
    }

    /// A one-line summary for logs and systemd's status.
    fn summary(&self) -> String {
        format!(
            "{} resources from {} stores, {} failed to load",
            self.resources, self.stores, self.failures
        )
    }

    /// Stops every group once its sync in progress is done, and returns them.
    async fn stop(mut self) -> Vec<Group> {
        // The groups hold a receiver each until they end.
        let _ = self.stop.send(true);
        let mut groups = Vec::new();
        while let Some(finished) = self.tasks.join_next().await {
            match finished {
                Ok(group) => groups.push(group),
                Err(e) => tracing::error!("a store's loop ended abnormally: {e}"),
            }
        }
        groups
    }
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

/// Loads every resource and parses its template once. Bad resources are logged and counted;
/// the others go on.
fn prepare_resources(loaded: Vec<Result<Vec<Resource>, ResourceError>>) -> (Vec<Prepared>, usize) {
    let mut prepared = Vec::new();
    let mut failures = 0;
    for loaded in loaded {
        let resources = match loaded {
            Ok(resources) => resources,
            Err(e) => {
                tracing::error!("{e}");
                failures += 1;
                continue;
            }
        };
        // The templates of one file go in together or not at all.
        let renderers: Result<Vec<Renderer>, String> = resources
            .iter()
            .map(|resource| {
                Renderer::from_file(&resource.src)
                    .map_err(|e| format!("{}: {e}", resource.file.display()))
            })
            .collect();
        match renderers {
            Ok(renderers) => prepared.extend(
                resources
                    .into_iter()
                    .zip(renderers)
                    .map(|(resource, renderer)| Prepared { resource, renderer }),
            ),
            Err(message) => {
                tracing::error!("{message}");
                failures += 1;
            }
        }
    }
    (prepared, failures)
}

/// The fewest prefixes that cover all of `keys`: a key under another one adds nothing to a
/// fetch or a watch.
fn covering_prefixes<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<String> {
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

/// The resources that read from one store, with that store's snapshot and watch.
struct Group {
    store: Box<dyn Store>,
    /// The store settings the group was made for; a SIGHUP keeps the group's client when
    /// they are unchanged.
    backend: Backend,
    prepared: Vec<Prepared>,
    /// Union of all resources' key prefixes: what is fetched and watched.
    prefixes: Vec<String>,
    snapshot: Arc<Snapshot>,
    options: Options,
    interval: Duration,
    outage: Outage,
    /// Where syncs are recorded for `--listen`.
    status: Status,
    /// Told once, after the first full sync.
    first_sync: Option<mpsc::UnboundedSender<()>>,
    /// The snapshot is current (handed over on SIGHUP): the first sync renders from it and
    /// the watch resumes where the previous one stopped, without reading the store again.
    warm: bool,
}

impl Group {
    fn new(
        store: Box<dyn Store>,
        backend: Backend,
        prepared: Vec<Prepared>,
        options: Options,
        interval: Duration,
        status: Status,
    ) -> Group {
        Group {
            backend,
            warm: false,
            prefixes: covering_prefixes(prepared.iter().flat_map(|p| p.resource.keys.iter())),
            options,
            interval,
            store,
            prepared,
            snapshot: Arc::new(Snapshot::default()),
            outage: Outage {
                since: None,
                status: status.clone(),
            },
            status,
            first_sync: None,
        }
    }

    /// One fetch, every resource once. Returns the number of failed resources.
    async fn onetime(&mut self) -> usize {
        if self.prepared.is_empty() {
            return 0;
        }
        match self.store.fetch(&self.prefixes).await {
            Ok(snapshot) => self.snapshot = Arc::new(snapshot),
            Err(e) => {
                tracing::error!("{} store: {e}", self.store.name());
                return self.prepared.len();
            }
        }
        self.sync(|_| true).await
    }

    /// Full fetch and sync every interval until shutdown.
    async fn poll(&mut self, shutdown: &mut Shutdown) {
        loop {
            self.resync().await;
            if !self.wait_interval(shutdown).await {
                return;
            }
        }
    }

    /// Waits one interval; false when shutdown came first.
    async fn wait_interval(&self, shutdown: &mut Shutdown) -> bool {
        tokio::select! {
            () = tokio::time::sleep(self.interval) => true,
            () = shutdown.wait() => false,
        }
    }

    /// Follows the store's changes until shutdown; falls back to polling for stores that
    /// cannot watch. While the store is unreachable the files stay as they are and attempts
    /// (failed ones, and watches that end as soon as they open) are spaced by a capped
    /// exponential backoff.
    async fn watch(&mut self, shutdown: &mut Shutdown) {
        let mut backoff = Backoff::default();
        if std::mem::take(&mut self.warm) {
            self.sync(|_| true).await;
            self.first_synced();
        } else {
            while !self.resync().await {
                if !backoff.wait(shutdown).await {
                    return;
                }
            }
        }
        // One timer for the whole watch: a watch that is opened again and again (a flapping
        // link, a proxy's idle timeout) must not keep the safety resync from ever running.
        let mut resync =
            tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        let mut opened_before = false;
        loop {
            match self.store.watch(&self.prefixes, &self.snapshot).await {
                Ok(Some(stream)) => {
                    self.outage.ended(self.store.name());
                    if std::mem::replace(&mut opened_before, true) {
                        self.status.watch_reopened(self.store.name());
                    }
                    let opened = Instant::now();
                    if self.follow(stream, &mut resync, shutdown).await.is_break() {
                        return;
                    }
                    // A stream that ends as soon as it is opened is retried with the same
                    // backoff as a failed attempt, not in a tight loop.
                    if opened.elapsed() < STABLE_WATCH {
                        if !backoff.wait(shutdown).await {
                            return;
                        }
                    } else {
                        backoff = Backoff::default();
                    }
                }
                Ok(None) => {
                    tracing::info!(
                        "the {} store cannot watch; polling every {:?}",
                        self.store.name(),
                        self.interval
                    );
                    // Everything was just synced; the first poll is one interval away.
                    if self.wait_interval(shutdown).await {
                        self.poll(shutdown).await;
                    }
                    return;
                }
                Err(e) => {
                    self.outage.began(self.store.name(), &e);
                    if !backoff.wait(shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// Applies a watch stream's events until it ends (`Continue`: watch again) or until
    /// shutdown (`Break`), with a full resync at every tick of `resync` as a safety net.
    async fn follow(
        &mut self,
        mut stream: WatchStream,
        resync: &mut tokio::time::Interval,
        shutdown: &mut Shutdown,
    ) -> std::ops::ControlFlow<()> {
        let mut settling = Settling::default();
        loop {
            let next_due = settling.next_due();
            tokio::select! {
                event = stream.recv() => {
                    let Some(event) = event else {
                        return std::ops::ControlFlow::Continue(());
                    };
                    let touched = self.apply(event);
                    let dirty = self.settle(touched, &mut settling);
                    self.sync_dirty(&mut stream, dirty, &mut settling).await;
                }
                () = sleep_until_due(next_due), if next_due.is_some() => {
                    let due = settling.take_due(Instant::now());
                    self.sync_dirty(&mut stream, due, &mut settling).await;
                }
                _ = resync.tick() => {
                    // What is queued is applied first. Changes still in flight that the read
                    // already covers are recognised by their revision and skipped.
                    while let Ok(event) = stream.try_recv() {
                        self.apply(event);
                    }
                    self.resync().await;
                    settling.clear();
                }
                () = shutdown.wait() => return std::ops::ControlFlow::Break(()),
            }
        }
    }

    /// Reconciles the `dirty` resources, in rounds: each round renders every resource dirty
    /// at its start once, and resources made dirty meanwhile wait for the next round, so one
    /// busy resource cannot starve the others. Before each render, every event already queued
    /// is applied first, so no render starts from a state that a queued change has
    /// superseded, and a burst of changes gives each affected resource one render with the
    /// final values.
    ///
    /// Resources with a `wait` that a queued change touches go back to `settling` rather than
    /// into the next round.
    async fn sync_dirty(
        &mut self,
        stream: &mut WatchStream,
        mut dirty: BTreeSet<usize>,
        settling: &mut Settling,
    ) {
        let mut shared = Arc::default();
        while !dirty.is_empty() {
            let mut round = self.with_file_mates(std::mem::take(&mut dirty));
            let mut rendered = Vec::with_capacity(round.len());
            while let Some(index) = round.pop_first() {
                while let Ok(event) = stream.try_recv() {
                    let touched = self.apply(event);
                    if !touched.is_empty() {
                        // What the listing functions computed may include a key that just
                        // changed.
                        shared = Arc::default();
                    }
                    // A resource still waiting in this round renders the new state anyway.
                    let touched = touched
                        .into_iter()
                        .filter(|t| !round.contains(t) && *t != index)
                        .collect();
                    dirty.extend(self.settle(touched, settling));
                }
                rendered.push(self.render(index, &shared));
            }
            self.commit(rendered).await;
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
        let now = Instant::now();
        touched
            .into_iter()
            .filter(|index| match self.prepared[*index].resource.wait {
                Some(wait) => {
                    settling.changed(*index, wait, now);
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
        let snapshot = Arc::make_mut(&mut self.snapshot);
        match event {
            Err(e @ StoreError::Unavailable(_)) => self.outage.began(self.store.name(), &e),
            Err(e) => tracing::error!("{} store: {e}", self.store.name()),
            // Changes the snapshot's read already holds (in flight during a resync) are old.
            Ok(WatchEvent::Changes {
                revision: Some(revision),
                ..
            }) if snapshot.revision.is_some_and(|read| revision <= read) => {}
            Ok(WatchEvent::Changes { changes, revision }) => {
                self.status.store_answered(self.store.name(), revision);
                for change in changes {
                    changed.insert(change.key().to_string());
                    snapshot.apply(change);
                }
            }
            Ok(WatchEvent::Replace(replacement)) => {
                changed.extend(changed_keys(snapshot, &replacement));
                *snapshot = replacement;
            }
        }
        if !changed.is_empty() {
            tracing::debug!("{} keys changed", changed.len());
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

    /// Fetches everything again and syncs every resource. Returns false when the store could
    /// not be read (the files on disk are left as they are).
    async fn resync(&mut self) -> bool {
        match self.store.fetch(&self.prefixes).await {
            Ok(snapshot) => {
                self.outage.ended(self.store.name());
                self.status
                    .store_answered(self.store.name(), snapshot.revision);
                self.snapshot = Arc::new(snapshot);
                self.sync(|_| true).await;
                self.first_synced();
                true
            }
            Err(e) => {
                self.outage.began(self.store.name(), &e);
                false
            }
        }
    }

    /// Tells the run loop, once, that every resource has been synced.
    fn first_synced(&mut self) {
        if let Some(first_sync) = self.first_sync.take() {
            // The run loop stops listening only when it ends.
            let _ = first_sync.send(());
        }
    }

    /// Renders and reconciles the resources `selected` picks, as one batch. Returns how many
    /// failed.
    async fn sync(&self, selected: impl Fn(&Resource) -> bool) -> usize {
        let shared = Arc::default();
        let rendered = (0..self.prepared.len())
            .filter(|index| selected(&self.prepared[*index].resource))
            .map(|index| self.render(index, &shared))
            .collect();
        self.commit(rendered).await
    }

    /// Renders resource `index` from the current snapshot. `shared` holds listing results
    /// computed by earlier renders of the same snapshot state.
    fn render(&self, index: usize, shared: &Arc<SharedResults>) -> Rendered {
        let prepared = &self.prepared[index];
        let resource = &prepared.resource;
        let view = View {
            snapshot: Arc::clone(&self.snapshot),
            prefix: resource.prefix.clone(),
            keys: resource.keys.clone(),
            shared: Arc::clone(shared),
        };
        let started = Instant::now();
        let content = prepared
            .renderer
            .render(view)
            .map_err(|e| format!("{}: {e}", resource.file.display()));
        Rendered {
            index,
            content,
            time: started.elapsed(),
        }
    }

    /// Reconciles the `rendered` resources as one batch (see [`reconcile::reconcile_batch`]),
    /// logs failures and records every result. Returns how many failed.
    async fn commit(&self, rendered: Vec<Rendered>) -> usize {
        let failed_files: BTreeSet<&Path> = rendered
            .iter()
            .filter(|r| r.content.is_err())
            .map(|r| self.prepared[r.index].resource.file.as_path())
            .collect();
        let good: Vec<(&Rendered, &str)> = rendered
            .iter()
            .filter_map(|r| r.content.as_deref().ok().map(|content| (r, content)))
            .collect();
        let items: Vec<reconcile::Item> = good
            .iter()
            .map(|(r, content)| reconcile::Item {
                resource: &self.prepared[r.index].resource,
                rendered: content,
            })
            .collect();
        let mut results = reconcile::reconcile_batch(&items, &failed_files, self.options)
            .await
            .into_iter();
        let mut failures = 0;
        for r in &rendered {
            let resource = &self.prepared[r.index].resource;
            let (kind, error) = match &r.content {
                Err(message) => (SyncResult::RenderFailed, Some(message.clone())),
                Ok(_) => match results.next() {
                    Some(Ok(Outcome::InSync)) => (SyncResult::InSync, None),
                    Some(Ok(Outcome::Updated)) => (SyncResult::Updated, None),
                    Some(Ok(Outcome::WouldUpdate)) => (SyncResult::WouldUpdate, None),
                    Some(Err(e)) => (
                        sync_result(&e),
                        Some(format!("{}: {e}", resource.file.display())),
                    ),
                    None => (SyncResult::InSync, None),
                },
            };
            if let Some(message) = &error {
                tracing::error!("{message}");
                failures += 1;
            }
            let commands_ran = !self.options.sync_only;
            self.status.synced(&SyncReport {
                resource: &resource.file,
                result: kind,
                error: error.as_deref(),
                render_time: r.time,
                checked: commands_ran && resource.check_cmd.is_some(),
                reloaded: commands_ran && resource.reload_cmd.is_some(),
                // A checksum of a short secret gives it away.
                md5: match (&r.content, self.options.secret || self.options.noop) {
                    (Ok(content), false)
                        if matches!(kind, SyncResult::InSync | SyncResult::Updated) =>
                    {
                        Some(reconcile::md5_hex(content.as_bytes()))
                    }
                    _ => None,
                },
            });
        }
        failures
    }
}

/// One resource rendered for a batch.
struct Rendered {
    /// The resource's index in its group.
    index: usize,
    /// The content, or the render error with the resource file.
    content: Result<String, String>,
    /// How long rendering took.
    time: Duration,
}

/// How a failed reconcile shows in metrics and the status page.
fn sync_result(error: &ReconcileError) -> SyncResult {
    match error {
        ReconcileError::Check { .. } => SyncResult::CheckFailed,
        ReconcileError::Reload { .. } | ReconcileError::RolledBack { .. } => {
            SyncResult::ReloadFailed
        }
        ReconcileError::Io { .. } | ReconcileError::Format { .. } | ReconcileError::Held { .. } => {
            SyncResult::WriteFailed
        }
    }
}

/// Returns at `due`; never without one.
async fn sleep_until_due(due: Option<Instant>) {
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

/// Logs a store outage once when it begins and once when it ends, however many attempts fail
/// in between.
struct Outage {
    since: Option<Instant>,
    /// Where store failures are counted.
    status: Status,
}

impl Outage {
    fn began(&mut self, store: &str, error: &StoreError) {
        self.status.store_failed(store);
        if self.since.is_none() {
            tracing::error!(
                "{store} store unavailable: {error}; keeping the current files and retrying"
            );
            self.since = Some(Instant::now());
        } else {
            tracing::debug!("{store} store still unavailable: {error}");
        }
    }

    fn ended(&mut self, store: &str) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                "{store} store available again after {:.1?}",
                since.elapsed()
            );
        }
    }
}

/// Capped exponential backoff between attempts to reach a store.
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { next: MIN_BACKOFF }
    }
}

impl Backoff {
    /// Waits for the next attempt; false when shutdown came first.
    async fn wait(&mut self, shutdown: &mut Shutdown) -> bool {
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = shutdown.wait() => false,
        }
    }
}

/// The request to stop, as seen by a store's loop: SIGINT, SIGTERM, or a SIGHUP that
/// replaces the loops.
struct Shutdown {
    signalled: watch::Receiver<bool>,
}

impl Shutdown {
    /// Returns once the stop has been requested (at once if it already has).
    async fn wait(&mut self) {
        // An error means the sender is gone, which only happens once the loops are stopped.
        let _ = self.signalled.wait_for(|signalled| *signalled).await;
    }
}

/// The signals the run loop handles, listened to for the whole run.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    fn listen() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
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

    #[test]
    fn changed_keys_finds_added_removed_and_modified() {
        let old = Snapshot {
            entries: [("/a", "1"), ("/b", "2"), ("/c", "3")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            revision: None,
        };
        let new = Snapshot {
            entries: [("/a", "1"), ("/b", "20"), ("/d", "4")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            revision: None,
        };
        let mut changed: Vec<String> = changed_keys(&old, &new).collect();
        changed.sort();
        assert_eq!(changed, ["/b", "/c", "/d"]);
    }
}
