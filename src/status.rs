//! What the daemon is doing, for people and for monitoring: the run loop records every sync
//! and store event in a [`Status`], and `--listen` serves it.
//!
//! - `/metrics`: Prometheus text format (renders, writes, checks and reloads by result, store
//!   errors, watch reconnects, last success per resource, render durations);
//! - `/health`: the process is alive; `/ready`: the first full sync is done;
//! - `/status`: the same as JSON, per resource and per store;
//! - `/`: a small page showing `/status`, refreshed every two seconds.
//!
//! The server never takes the descriptors the stores and files need: it holds a bounded number
//! of connections (the others wait in the kernel's backlog) and drops idle and slow ones.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use chrono::{SecondsFormat, Utc};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::secrets;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The page served at `/`.
const PAGE: &str = include_str!("status.html");

/// How one sync of a resource ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncResult {
    /// The destination already matched.
    InSync,
    /// The destination was replaced (checked and reloaded where the resource says so).
    Updated,
    /// `--noop`: the destination differs.
    WouldUpdate,
    /// The template could not be rendered.
    RenderFailed,
    /// The check command rejected the new content.
    CheckFailed,
    /// The reload command failed (after the swap; rolled back where the resource says so).
    ReloadFailed,
    /// Reading, staging or writing a file failed, or the output was not in its format.
    WriteFailed,
    /// The store showed the resource fewer keys than its `min_keys`: not rendered, and its
    /// destination left as it is.
    Guarded,
}

impl SyncResult {
    /// Every result, for dropping the series of a resource that is no longer configured.
    const ALL: [SyncResult; 8] = [
        SyncResult::InSync,
        SyncResult::Updated,
        SyncResult::WouldUpdate,
        SyncResult::RenderFailed,
        SyncResult::CheckFailed,
        SyncResult::ReloadFailed,
        SyncResult::WriteFailed,
        SyncResult::Guarded,
    ];

    /// The name used in metrics labels and in `/status`.
    pub fn name(self) -> &'static str {
        match self {
            SyncResult::InSync => "in_sync",
            SyncResult::Updated => "updated",
            SyncResult::WouldUpdate => "would_update",
            SyncResult::RenderFailed => "render_failed",
            SyncResult::CheckFailed => "check_failed",
            SyncResult::ReloadFailed => "reload_failed",
            SyncResult::WriteFailed => "write_failed",
            SyncResult::Guarded => "guarded",
        }
    }

    fn failed(self) -> bool {
        matches!(
            self,
            SyncResult::RenderFailed
                | SyncResult::CheckFailed
                | SyncResult::ReloadFailed
                | SyncResult::WriteFailed
                | SyncResult::Guarded
        )
    }
}

/// One sync of a resource, as the run loop reports it.
#[derive(Debug)]
pub struct SyncReport<'a> {
    /// The resource file.
    pub resource: &'a Path,
    /// How it ended.
    pub result: SyncResult,
    /// The error, for failures.
    pub error: Option<&'a str>,
    /// How long rendering took.
    pub render_time: Duration,
    /// This sync replaced the destination.
    pub wrote: bool,
    /// The resource has a check command, so an update passed it.
    pub checked: bool,
    /// The resource has a reload command, so an update ran it.
    pub reloaded: bool,
    /// md5 of the destination as it now is, where known and not secret.
    pub md5: Option<String>,
    /// A rollback after a failed reload put the previous file back (a swap, then a second
    /// one), and how the reload run on it went (`None`: not run).
    pub rolled_back: Option<Option<bool>>,
    /// When a failure that may pass is tried again; `None` after a success, or for a failure
    /// that waits for new data.
    pub next_attempt: Option<std::time::SystemTime>,
}

/// The daemon's state as recorded by the run loop; cheap to clone, shared by all loops.
#[derive(Clone, Default)]
pub struct Status {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<StatusState>,
    metrics: Metrics,
}

/// The outcome of reading the settings, conf.d and templates again, in `/status`.
#[derive(Serialize)]
struct ReloadState {
    /// True when they were taken; false when they were refused and the running set kept.
    ok: bool,
    /// When, RFC 3339.
    at: String,
    /// Why they were refused.
    error: Option<String>,
}

/// What `/status` shows.
#[derive(Default, Serialize)]
struct StatusState {
    ready: bool,
    resources: BTreeMap<String, ResourceState>,
    stores: BTreeMap<String, StoreState>,
    /// The announcements, by key.
    announcements: BTreeMap<String, AnnouncementEntry>,
    /// Resource files of the running settings that could not be loaded (their resources are
    /// not managed), with why.
    unloaded: BTreeMap<String, String>,
    /// The last time the settings, conf.d and templates were read again (SIGHUP, or a change
    /// found at an interval): whether they were taken, when, and why not.
    last_reload: Option<ReloadState>,
    /// Store loops that failed unexpectedly and have not completed a full sync since, with
    /// the failure.
    #[serde(skip)]
    failed_loops: BTreeMap<String, String>,
}

impl StatusState {
    /// See [`Status::readiness`].
    fn readiness(&self) -> Result<(), String> {
        if !self.ready {
            return Err("first sync not done".to_string());
        }
        if let Some(waiting) = self
            .announcements
            .values()
            .find(|announcement| !announcement.settled)
        {
            let why = match &waiting.last_error {
                Some(error) => format!("the store fails: {error}"),
                None => "waiting for its first check and the store's first answer".to_string(),
            };
            return Err(secrets::mask(&format!(
                "announcement {} not in place yet: {why}",
                waiting.key
            ))
            .into_owned());
        }
        match self.failed_loops.iter().next() {
            Some((instance, failure)) => Err(secrets::mask(&format!(
                "the loop of {instance} failed ({failure}) and has not synced again"
            ))
            .into_owned()),
            None => Ok(()),
        }
    }
}

#[derive(Default, Serialize)]
struct ResourceState {
    file: String,
    dest: String,
    /// The store instance it reads.
    store: String,
    md5: Option<String>,
    last_result: Option<&'static str>,
    last_error: Option<String>,
    last_change: Option<String>,
    last_success: Option<String>,
    /// When a failure that may pass is tried again.
    next_attempt: Option<String>,
}

#[derive(Default, Serialize)]
struct StoreState {
    /// The kind of store (`etcd`).
    name: String,
    /// Which one: the kind and its nodes.
    instance: String,
    connected: bool,
    /// Why the store last failed, while it fails.
    last_error: Option<String>,
    revision: Option<i64>,
    /// Why its loop is restarting, after an unexpected failure.
    loop_failure: Option<String>,
}

/// Where an announcement stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnnouncementState {
    /// Waiting for its first check or its first answer from the store.
    Waiting,
    /// The key is in the store, bound to its TTL.
    Up,
    /// The check fails: the key is withdrawn.
    CheckFailing,
    /// The store does not answer or refuses: the key may be gone.
    StoreFailing,
    /// Withdrawn as reconfd stops.
    Withdrawn,
}

#[derive(Serialize)]
struct AnnouncementEntry {
    key: String,
    /// The store instance it is kept in.
    store: String,
    state: AnnouncementState,
    /// The store's latest failure, while it fails.
    last_error: Option<String>,
    /// When the state last changed.
    since: String,
    /// The announcement has been up or withdrawn by its check at least once: its first check
    /// and the store's first answer are in.
    #[serde(skip)]
    settled: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnnouncementLabel {
    key: String,
    store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    resource: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabel {
    store: String,
    instance: String,
}

type Histograms = Family<ResourceLabel, Histogram, fn() -> Histogram>;

struct Metrics {
    registry: Registry,
    renders: Family<ResultLabels, Counter>,
    writes: Family<ResourceLabel, Counter>,
    checks: Family<ResultLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    store_errors: Family<StoreLabel, Counter>,
    watch_reconnects: Family<StoreLabel, Counter>,
    store_up: Family<StoreLabel, Gauge>,
    last_success: Family<ResourceLabel, Gauge<f64, AtomicU64>>,
    guarded: Family<ResourceLabel, Gauge>,
    render_seconds: Histograms,
    announcement_up: Family<AnnouncementLabel, Gauge>,
    unloaded: Gauge,
    reload_successful: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        fn render_histogram() -> Histogram {
            // 0.1 ms to about 3 s.
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        }
        let mut metrics = Metrics {
            registry: Registry::default(),
            renders: Family::default(),
            writes: Family::default(),
            checks: Family::default(),
            reloads: Family::default(),
            store_errors: Family::default(),
            watch_reconnects: Family::default(),
            store_up: Family::default(),
            last_success: Family::default(),
            guarded: Family::default(),
            render_seconds: Family::new_with_constructor(render_histogram),
            announcement_up: Family::default(),
            unloaded: Gauge::default(),
            reload_successful: Gauge::default(),
        };
        // Nothing refused yet: the settings the process started with were taken.
        metrics.reload_successful.set(1);
        let registry = &mut metrics.registry;
        registry.register(
            "reconfd_renders",
            "Resource syncs by result",
            metrics.renders.clone(),
        );
        registry.register(
            "reconfd_writes",
            "Destinations replaced",
            metrics.writes.clone(),
        );
        registry.register(
            "reconfd_checks",
            "Check commands by result",
            metrics.checks.clone(),
        );
        registry.register(
            "reconfd_reloads",
            "Reload commands by result",
            metrics.reloads.clone(),
        );
        registry.register(
            "reconfd_store_errors",
            "Failed store reads and watches",
            metrics.store_errors.clone(),
        );
        registry.register(
            "reconfd_watch_reconnects",
            "Watches opened again after the first",
            metrics.watch_reconnects.clone(),
        );
        registry.register(
            "reconfd_store_up",
            "1 while the store instance answers, 0 after a failed read or watch",
            metrics.store_up.clone(),
        );
        registry.register(
            "reconfd_last_success_timestamp_seconds",
            "When each resource was last in sync or updated",
            metrics.last_success.clone(),
        );
        registry.register(
            "reconfd_resource_guarded",
            "1 while the resource sees fewer keys than its min_keys and is not synced",
            metrics.guarded.clone(),
        );
        registry.register(
            "reconfd_render_duration_seconds",
            "Time to render a resource's template",
            metrics.render_seconds.clone(),
        );
        registry.register(
            "reconfd_resource_files_unloaded",
            "Resource files of the running settings that could not be loaded, whose templates \
             are not managed",
            metrics.unloaded.clone(),
        );
        registry.register(
            "reconfd_last_reload_successful",
            "0 after the settings, conf.d and templates read again were refused (the running \
             set kept), 1 otherwise",
            metrics.reload_successful.clone(),
        );
        registry.register(
            "reconfd_announcement_up",
            "1 while the announced key is in the store, 0 while it is not (check failing, store \
             failing, withdrawn)",
            metrics.announcement_up.clone(),
        );
        metrics
    }
}

impl Metrics {
    /// Drops every series of a store instance no resource or announcement uses any more.
    fn forget_store(&self, label: StoreLabel) {
        self.store_errors.remove(&label);
        self.watch_reconnects.remove(&label);
        self.store_up.remove(&label);
    }

    /// Drops every series of `resource`: a removed resource's frozen last-success time would
    /// otherwise keep a staleness alert firing for good.
    fn forget(&self, resource: String) {
        let results = SyncResult::ALL
            .iter()
            .map(|result| result.name())
            .chain(["ok", "failed"]);
        for result in results {
            let labels = ResultLabels {
                resource: resource.clone(),
                result: result.to_string(),
            };
            self.renders.remove(&labels);
            self.checks.remove(&labels);
            self.reloads.remove(&labels);
        }
        let label = ResourceLabel { resource };
        self.writes.remove(&label);
        self.last_success.remove(&label);
        self.guarded.remove(&label);
        self.render_seconds.remove(&label);
    }
}

impl Status {
    /// A status with nothing recorded.
    pub fn new() -> Status {
        Status::default()
    }

    fn state(&self) -> MutexGuard<'_, StatusState> {
        // A panic while holding the lock leaves plain data behind, still worth showing.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets the resources shown: those of the running settings (again after a SIGHUP), as
    /// (resource file, destination, store instance). Resources no longer configured leave
    /// `/status` and `/metrics`.
    pub fn set_resources<'a>(
        &self,
        resources: impl Iterator<Item = (&'a Path, &'a Path, &'a str)>,
    ) {
        let mut state = self.state();
        let mut previous = std::mem::take(&mut state.resources);
        for (file, dest, store) in resources {
            let key = file.display().to_string();
            let entry = previous.remove(&key).unwrap_or_default();
            state.resources.insert(
                key.clone(),
                ResourceState {
                    file: key,
                    dest: dest.display().to_string(),
                    store: store.to_string(),
                    ..entry
                },
            );
        }
        for gone in previous.into_keys() {
            self.shared.metrics.forget(gone);
        }
        // A store that a SIGHUP replaced would otherwise stay listed, up, for good.
        let in_use: BTreeSet<&str> = state
            .resources
            .values()
            .map(|resource| resource.store.as_str())
            .chain(state.announcements.values().map(|a| a.store.as_str()))
            .collect();
        let unused: Vec<String> = state
            .stores
            .keys()
            .filter(|instance| !in_use.contains(instance.as_str()))
            .cloned()
            .collect();
        for instance in unused {
            state.failed_loops.remove(&instance);
            if let Some(store) = state.stores.remove(&instance) {
                self.shared.metrics.forget_store(StoreLabel {
                    store: store.name,
                    instance,
                });
            }
        }
    }

    /// Sets the resource files of the running settings that could not be loaded, as (file,
    /// why).
    pub fn set_unloaded(&self, unloaded: impl IntoIterator<Item = (String, String)>) {
        let mut state = self.state();
        state.unloaded = unloaded.into_iter().collect();
        self.shared
            .metrics
            .unloaded
            .set(i64::try_from(state.unloaded.len()).unwrap_or(i64::MAX));
    }

    /// Records one sync of a resource.
    pub fn synced(&self, sync: &SyncReport<'_>) {
        let now = Utc::now();
        let resource = sync.resource.display().to_string();
        let metrics = &self.shared.metrics;
        let labels = |result: &str| ResultLabels {
            resource: resource.clone(),
            result: result.to_string(),
        };
        let resource_label = ResourceLabel {
            resource: resource.clone(),
        };
        metrics
            .renders
            .get_or_create(&labels(sync.result.name()))
            .inc();
        metrics
            .guarded
            .get_or_create(&resource_label)
            .set(i64::from(sync.result == SyncResult::Guarded));
        if !matches!(sync.result, SyncResult::RenderFailed | SyncResult::Guarded) {
            metrics
                .render_seconds
                .get_or_create(&resource_label)
                .observe(sync.render_time.as_secs_f64());
        }
        if sync.wrote {
            metrics.writes.get_or_create(&resource_label).inc();
        }
        if let Some(second_reload) = sync.rolled_back {
            // The swap and the restore each replaced the destination.
            metrics.writes.get_or_create(&resource_label).inc_by(2);
            if let Some(succeeded) = second_reload {
                let result = if succeeded { "ok" } else { "failed" };
                metrics.reloads.get_or_create(&labels(result)).inc();
            }
        }
        match sync.result {
            SyncResult::Updated => {
                if sync.checked {
                    metrics.checks.get_or_create(&labels("ok")).inc();
                }
                if sync.reloaded {
                    metrics.reloads.get_or_create(&labels("ok")).inc();
                }
            }
            SyncResult::CheckFailed => {
                metrics.checks.get_or_create(&labels("failed")).inc();
            }
            SyncResult::ReloadFailed => {
                if sync.checked {
                    metrics.checks.get_or_create(&labels("ok")).inc();
                }
                metrics.reloads.get_or_create(&labels("failed")).inc();
            }
            _ => {}
        }
        if !sync.result.failed() {
            metrics
                .last_success
                .get_or_create(&resource_label)
                .set(now.timestamp_millis() as f64 / 1000.0);
        }
        let mut state = self.state();
        let entry = state.resources.entry(resource.clone()).or_default();
        entry.file = resource;
        entry.last_result = Some(sync.result.name());
        entry.last_error = sync.error.map(str::to_string);
        if let Some(md5) = &sync.md5 {
            entry.md5 = Some(md5.clone());
        }
        let stamp = now.to_rfc3339_opts(SecondsFormat::Secs, true);
        // When the file changed: a swap, also one whose reload failed; not the later reload
        // that completed it.
        if sync.wrote {
            entry.last_change = Some(stamp.clone());
        }
        if !sync.result.failed() {
            entry.last_success = Some(stamp);
        }
        entry.next_attempt = sync
            .next_attempt
            .map(|at| chrono::DateTime::<Utc>::from(at).to_rfc3339_opts(SecondsFormat::Secs, true));
    }

    /// Records that store `instance` (of kind `store`) could not be read or watched, and why.
    pub fn store_failed(&self, instance: &str, store: &str, error: &str) {
        self.shared
            .metrics
            .store_errors
            .get_or_create(&StoreLabel {
                store: store.to_string(),
                instance: instance.to_string(),
            })
            .inc();
        self.store_up(instance, store, 0);
        self.store_entry(instance, store, |entry| {
            entry.connected = false;
            entry.last_error = Some(secrets::mask(error).into_owned());
        });
    }

    /// Records that store `instance` (of kind `store`) answered, at `revision` where it has
    /// one.
    pub fn store_answered(&self, instance: &str, store: &str, revision: Option<i64>) {
        self.store_up(instance, store, 1);
        self.store_entry(instance, store, |entry| {
            entry.connected = true;
            entry.last_error = None;
            if revision.is_some() {
                entry.revision = revision;
            }
        });
    }

    /// Records that a watch of store `instance` (of kind `store`) was opened again.
    pub fn watch_reopened(&self, instance: &str, store: &str) {
        self.shared
            .metrics
            .watch_reconnects
            .get_or_create(&StoreLabel {
                store: store.to_string(),
                instance: instance.to_string(),
            })
            .inc();
    }

    fn store_up(&self, instance: &str, store: &str, up: i64) {
        self.shared
            .metrics
            .store_up
            .get_or_create(&StoreLabel {
                store: store.to_string(),
                instance: instance.to_string(),
            })
            .set(up);
    }

    fn store_entry(&self, instance: &str, store: &str, change: impl FnOnce(&mut StoreState)) {
        let mut state = self.state();
        let entry = state
            .stores
            .entry(instance.to_string())
            .or_insert_with(|| StoreState {
                name: store.to_string(),
                instance: instance.to_string(),
                ..StoreState::default()
            });
        change(entry);
    }

    /// Records that the loop of store `instance` failed unexpectedly and is starting over:
    /// until it has synced again, `/ready` answers 503 and `/status` shows why.
    pub fn loop_failed(&self, instance: &str, failure: &str) {
        let mut state = self.state();
        state
            .failed_loops
            .insert(instance.to_string(), failure.to_string());
        if let Some(entry) = state.stores.get_mut(instance) {
            entry.loop_failure = Some(failure.to_string());
        }
    }

    /// Records that the loop of store `instance` completed a full sync.
    pub fn loop_running(&self, instance: &str) {
        let mut state = self.state();
        if state.failed_loops.remove(instance).is_some()
            && let Some(entry) = state.stores.get_mut(instance)
        {
            entry.loop_failure = None;
        }
    }

    /// Records where the announcement of `key`, kept in store `instance`, stands; `error` is
    /// the store's failure while it fails.
    pub fn announcement(
        &self,
        key: &str,
        instance: &str,
        state: AnnouncementState,
        error: Option<&str>,
    ) {
        self.shared
            .metrics
            .announcement_up
            .get_or_create(&AnnouncementLabel {
                key: key.to_string(),
                store: instance.to_string(),
            })
            .set(i64::from(state == AnnouncementState::Up));
        let mut state_now = self.state();
        let since = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        let entry = state_now
            .announcements
            .entry(key.to_string())
            .or_insert_with(|| AnnouncementEntry {
                key: key.to_string(),
                store: instance.to_string(),
                state,
                last_error: None,
                since: since.clone(),
                settled: false,
            });
        if entry.state != state {
            entry.since = since;
        }
        entry.state = state;
        entry.settled |= matches!(
            state,
            AnnouncementState::Up | AnnouncementState::CheckFailing | AnnouncementState::Withdrawn
        );
        entry.last_error = error.map(str::to_string);
    }

    /// Records that the settings, conf.d and templates read again were taken (`error` is
    /// `None`) or refused, the running set kept.
    pub fn reloaded(&self, error: Option<&str>) {
        self.shared
            .metrics
            .reload_successful
            .set(i64::from(error.is_none()));
        self.state().last_reload = Some(ReloadState {
            ok: error.is_none(),
            at: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
            error: error.map(str::to_string),
        });
    }

    /// Records that the first full sync is done.
    pub fn set_ready(&self) {
        self.state().ready = true;
    }

    /// Ready: the first full sync is done, every announcement has had its first check and its
    /// first answer from the store, and no store loop is starting over after a failure. The
    /// reason, when not, is masked for output.
    pub(crate) fn readiness(&self) -> Result<(), String> {
        let state = self.state();
        state.readiness()
    }

    /// `/metrics`, masked for output.
    pub(crate) fn metrics_text(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.shared.metrics.registry);
        secrets::mask(&text).into_owned()
    }

    /// `/status`, masked for output.
    pub(crate) fn status_json(&self) -> serde_json::Value {
        let state = self.state();
        let mut json = serde_json::json!({
            "ready": state.readiness().is_ok(),
            "resources": state.resources.values().collect::<Vec<_>>(),
            "stores": state.stores.values().collect::<Vec<_>>(),
            "announcements": state.announcements.values().collect::<Vec<_>>(),
            "unloaded": state
                .unloaded
                .iter()
                .map(|(file, error)| serde_json::json!({"file": file, "error": error}))
                .collect::<Vec<_>>(),
            "last_reload": state.last_reload,
        });
        secrets::mask_json(&mut json);
        json
    }
}

/// The routes `--listen` serves.
pub fn router(status: Status) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics))
        .with_state(status)
}

async fn ready(State(status): State<Status>) -> Response {
    match status.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn status_json(State(status): State<Status>) -> axum::Json<serde_json::Value> {
    axum::Json(status.status_json())
}

async fn metrics(State(status): State<Status>) -> Response {
    (
        // prometheus-client writes OpenMetrics (`_total` suffixes, `# EOF`); saying so makes
        // Prometheus use the parser that matches counters to their families.
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        status.metrics_text(),
    )
        .into_response()
}

/// The most connections the status server holds at once: a quarter of the open files limit,
/// and no more than this. Monitors and a person's browser need a handful; the other
/// descriptors stay with the stores, the data files, the stage files and the commands.
const MAX_CONNECTIONS: usize = 128;

/// How long a connection may take to send a request's head, counted from when it opens or
/// when its previous response was written: an idle or slow client is dropped after it.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection stays open in all. Then it is closed once the response in progress is
/// written, or [`CLOSING_GRACE`] later if the client does not read it.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// How long a connection past its lifetime may take to finish its response.
const CLOSING_GRACE: Duration = Duration::from_secs(5);

/// How many connections the status server holds at once under a limit of `open_files`.
fn connection_limit(open_files: u64) -> usize {
    usize::try_from(open_files / 4)
        .unwrap_or(MAX_CONNECTIONS)
        .clamp(1, MAX_CONNECTIONS)
}

/// Serves `status` on `listener` until the process ends, holding no more connections than a
/// share of `open_files`, the process's limit on open files, and none for long.
pub async fn serve(listener: tokio::net::TcpListener, status: Status, open_files: u64) {
    let router = router(status);
    let permits = Arc::new(Semaphore::new(connection_limit(open_files)));
    loop {
        // A permit is taken before accepting, so connections past the limit wait in the
        // kernel's backlog, where they hold none of reconfd's descriptors. The semaphore is
        // never closed.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, router.clone(), permit));
            }
            // Gone before it was accepted: nothing to serve.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                // Out of descriptors, most likely; accepting again at once would only spin.
                tracing::warn!("the status server cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Serves one connection within [`HEADER_TIMEOUT`] and [`CONNECTION_LIFETIME`]; `_permit`
/// is released when it closes.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    router: Router,
    _permit: OwnedSemaphorePermit,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let connection =
        builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        // A client that went away or broke the protocol is no concern of the daemon's.
        _ = connection.as_mut() => return,
        () = tokio::time::sleep(CONNECTION_LIFETIME) => connection.as_mut().graceful_shutdown(),
    }
    let _ = tokio::time::timeout(CLOSING_GRACE, connection).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(result: SyncResult) -> SyncReport<'static> {
        SyncReport {
            resource: Path::new("/etc/reconfd/conf.d/app.toml"),
            result,
            error: result.failed().then_some("it broke"),
            render_time: Duration::from_millis(2),
            wrote: matches!(result, SyncResult::Updated | SyncResult::ReloadFailed),
            checked: true,
            reloaded: true,
            md5: Some("abc".to_string()),
            rolled_back: None,
            next_attempt: None,
        }
    }

    #[test]
    fn metrics_count_renders_by_result() {
        let status = Status::new();
        status.synced(&sync(SyncResult::Updated));
        status.synced(&sync(SyncResult::InSync));
        status.synced(&sync(SyncResult::CheckFailed));
        status.store_failed("etcd http://127.0.0.1:2379", "etcd", "refused");
        let text = status.metrics_text();
        let resource = "resource=\"/etc/reconfd/conf.d/app.toml\"";
        for line in [
            format!("reconfd_renders_total{{{resource},result=\"updated\"}} 1"),
            format!("reconfd_renders_total{{{resource},result=\"check_failed\"}} 1"),
            format!("reconfd_writes_total{{{resource}}} 1"),
            format!("reconfd_checks_total{{{resource},result=\"failed\"}} 1"),
            format!("reconfd_reloads_total{{{resource},result=\"ok\"}} 1"),
            "reconfd_store_errors_total{store=\"etcd\",instance=\"etcd http://127.0.0.1:2379\"} 1"
                .to_string(),
            format!("reconfd_render_duration_seconds_count{{{resource}}} 3"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_exposition(&text);
    }

    #[test]
    fn a_rollback_counts_both_swaps_and_both_reloads() {
        let status = Status::new();
        // The reload failed, the previous file was put back and reloaded.
        status.synced(&SyncReport {
            wrote: false,
            rolled_back: Some(Some(true)),
            ..sync(SyncResult::ReloadFailed)
        });
        let text = status.metrics_text();
        let resource = "resource=\"/etc/reconfd/conf.d/app.toml\"";
        for line in [
            format!("reconfd_writes_total{{{resource}}} 2"),
            format!("reconfd_reloads_total{{{resource},result=\"failed\"}} 1"),
            format!("reconfd_reloads_total{{{resource},result=\"ok\"}} 1"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    /// Fails unless `text` is OpenMetrics text exposition: `# HELP` and `# TYPE` lines, samples
    /// `name{label="value",...} number` whose names belong to a declared family of that type,
    /// and `# EOF` at the end.
    fn assert_exposition(text: &str) {
        fn is_name(name: &str) -> bool {
            name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        /// `label="value",...` with `\\`, `\"` and `\n` escapes, as the format has them.
        fn labels_are_valid(mut labels: &str) -> bool {
            while !labels.is_empty() {
                let Some((name, rest)) = labels.split_once("=\"") else {
                    return false;
                };
                let mut chars = rest.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some((_, '\\' | '"' | 'n')) => {}
                            _ => return false,
                        },
                        '"' => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let Some(end) = end else { return false };
                if !is_name(name) {
                    return false;
                }
                labels = &rest[end + 1..];
                if let Some(rest) = labels.strip_prefix(',') {
                    labels = rest;
                } else if !labels.is_empty() {
                    return false;
                }
            }
            true
        }
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
        let mut families = BTreeMap::new();
        for line in &lines[..lines.len() - 1] {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(is_name(name), "{line:?}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
                assert!(is_name(name), "{line:?}");
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind),
                    "{line:?}"
                );
                families.insert(name.to_string(), kind.to_string());
            } else {
                let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
                assert!(value.parse::<f64>().is_ok(), "a number in {line:?}");
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => {
                        let labels = labels.strip_suffix('}');
                        (name, labels.unwrap_or_else(|| panic!("{line:?}")))
                    }
                    None => (series, ""),
                };
                assert!(labels_are_valid(labels), "labels in {line:?}");
                let declared = families.iter().any(|(family, kind)| {
                    let suffixes: &[&str] = match kind.as_str() {
                        "counter" => &["_total", "_created"],
                        "histogram" => &["_bucket", "_sum", "_count", "_created"],
                        _ => &[""],
                    };
                    suffixes
                        .iter()
                        .any(|suffix| name.strip_suffix(suffix) == Some(family.as_str()))
                });
                assert!(declared, "{line:?} belongs to no declared family\n{text}");
            }
        }
    }

    #[test]
    fn resources_removed_by_a_reload_leave_the_metrics() {
        let status = Status::new();
        let app = (
            Path::new("/etc/reconfd/conf.d/app.toml"),
            Path::new("/etc/app.conf"),
            "env",
        );
        status.set_resources([app].into_iter());
        status.synced(&sync(SyncResult::Updated));
        assert!(status.metrics_text().contains("app.toml"));
        status.set_resources(std::iter::empty());
        let text = status.metrics_text();
        assert!(!text.contains("app.toml"), "{text}");
        assert_exposition(&text);
        assert_eq!(status.status_json()["resources"], serde_json::json!([]));
    }

    #[test]
    fn a_store_no_resource_reads_after_a_reload_leaves_status_and_metrics() {
        let status = Status::new();
        let old = "redis redis://127.0.0.1:6379";
        let new = "redis redis://127.0.0.1:6380";
        let app = |store| {
            [(
                Path::new("/etc/reconfd/conf.d/app.toml"),
                Path::new("/etc/app.conf"),
                store,
            )]
        };
        status.set_resources(app(old).into_iter());
        status.store_answered(old, "redis", None);
        status.store_failed(old, "redis", "gone");
        assert!(status.metrics_text().contains(old));
        assert_eq!(
            status.status_json()["stores"][0]["last_error"],
            "gone",
            "says why it fails"
        );
        status.set_resources(app(new).into_iter());
        status.store_answered(new, "redis", None);
        let text = status.metrics_text();
        assert!(!text.contains(old), "{text}");
        assert!(text.contains(new), "{text}");
        assert_exposition(&text);
        let stores = status.status_json()["stores"].clone();
        assert_eq!(stores.as_array().map(Vec::len), Some(1), "{stores}");
        assert_eq!(stores[0]["instance"], new);
        assert_eq!(stores[0]["last_error"], serde_json::Value::Null);
    }

    /// `GET path` on `address`: the status code, the headers and the body.
    async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("response");
        let (head, body) = response.split_once("\r\n\r\n").expect("a head");
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("a status line");
        (code, head.to_ascii_lowercase(), body.to_string())
    }

    #[tokio::test]
    async fn the_server_answers_every_route_and_ready_flips() {
        let status = Status::new();
        status.set_resources(
            [(
                Path::new("/etc/reconfd/conf.d/app.toml"),
                Path::new("/etc/app.conf"),
                "file data.yaml",
            )]
            .into_iter(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(serve(listener, status.clone(), 1024));

        let (code, _, body) = get(address, "/health").await;
        assert_eq!((code, body.as_str()), (200, "ok\n"));
        assert_eq!(get(address, "/ready").await.0, 503);
        status.synced(&sync(SyncResult::Updated));
        status.set_ready();
        assert_eq!(get(address, "/ready").await.0, 200);

        let (code, head, body) = get(address, "/status").await;
        assert_eq!(code, 200);
        assert!(head.contains("content-type: application/json"), "{head}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(json["ready"], true);
        assert_eq!(json["resources"][0]["dest"], "/etc/app.conf");
        assert_eq!(json["resources"][0]["last_result"], "updated");
        assert!(
            json["resources"][0]["last_change"]
                .as_str()
                .is_some_and(|time| chrono::DateTime::parse_from_rfc3339(time).is_ok()),
            "{body}"
        );

        let (code, head, body) = get(address, "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            head.contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        assert_exposition(&body);
        assert!(
            body.contains("reconfd_last_success_timestamp_seconds{"),
            "{body}"
        );

        let (code, head, body) = get(address, "/").await;
        assert_eq!(code, 200);
        assert!(head.contains("content-type: text/html"), "{head}");
        assert!(body.contains("fetch(\"/status\")"), "{body}");
        assert_eq!(get(address, "/nothing").await.0, 404);
    }

    #[test]
    fn status_lists_every_resource_with_its_last_result() {
        let status = Status::new();
        status.set_resources(
            [
                (Path::new("conf.d/a.toml"), Path::new("/etc/a.conf"), "env"),
                (Path::new("conf.d/b.toml"), Path::new("/etc/b.conf"), "env"),
            ]
            .into_iter(),
        );
        let mut failed = sync(SyncResult::ReloadFailed);
        failed.resource = Path::new("conf.d/b.toml");
        status.synced(&failed);
        let json = status.status_json();
        let resources = json["resources"].as_array().expect("array");
        assert_eq!(resources.len(), 2);
        assert_eq!(resources[0]["dest"], "/etc/a.conf");
        assert_eq!(resources[0]["last_result"], serde_json::Value::Null);
        assert_eq!(resources[1]["last_result"], "reload_failed");
        assert_eq!(resources[1]["last_error"], "it broke");
        assert_eq!(json["ready"], false);
        status.set_ready();
        assert_eq!(status.status_json()["ready"], true);
    }

    #[test]
    fn readiness_waits_for_every_announcement_to_be_in_place_once() {
        let status = Status::new();
        status.set_ready();
        let store = "etcd http://127.0.0.1:2379";
        status.announcement("/a", store, AnnouncementState::Waiting, None);
        status.announcement("/b", store, AnnouncementState::Waiting, None);
        status.announcement("/a", store, AnnouncementState::Up, None);
        // A store that refuses is no answer: /b is not in place.
        status.announcement(
            "/b",
            store,
            AnnouncementState::StoreFailing,
            Some("connection refused"),
        );
        let why = status.readiness().expect_err("/b not in place");
        assert!(why.contains("announcement /b not in place yet"), "{why}");
        assert_eq!(status.status_json()["ready"], false);
        // Withdrawn by its failing check: in place, as the check wants it.
        status.announcement("/b", store, AnnouncementState::CheckFailing, None);
        assert_eq!(status.readiness(), Ok(()));
        // A later outage of the store does not take readiness back, as for resources.
        status.announcement(
            "/a",
            store,
            AnnouncementState::StoreFailing,
            Some("connection refused"),
        );
        assert_eq!(status.readiness(), Ok(()));
        assert_eq!(status.status_json()["ready"], true);
    }
}
