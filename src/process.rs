//! The process around the controllers: the open files limit, signals, SIGHUP generations, the
//! status server, sd_notify, and the one place where the outcome becomes an exit status.
//!
//! `--onetime` runs every controller once and exits 0 when every resource is in sync or
//! updated, 1 when any failed or when SIGTERM or SIGINT interrupted it (killing the command
//! running then), 2 for unusable settings; with `--noop --exit-code`, 3 when all went well but
//! a destination would change. Otherwise the controllers run until
//! SIGTERM or SIGINT; SIGHUP checks the settings, conf.d and templates again and, when all of
//! it is usable, replaces the running controllers with a new generation.
//!
//! In exec mode ([`crate::exec`]) the service starts after the first full sync, once every
//! destination exists; SIGTERM and
//! SIGINT stop it, and reconfd exits with its status, as it does when the service exits on
//! its own. As PID 1, or in exec mode (which makes it the child subreaper), reconfd reaps the
//! orphans that come to it ([`crate::reaper`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::announce::Announcers;
use crate::command::CommandEnv;
use crate::controller::{Controller, Shutdown, Tally};
use crate::descriptors;
use crate::exec::{self, Service, Swaps};
use crate::notify;
use crate::plan::{self, ConfdirState, Plan, PlanError, plural};
use crate::reaper;
use crate::reconcile::{self, FILE_WORK_GRACE};
use crate::settings::{RunMode, Settings};
use crate::status::{self, Status};

/// Runs reconfd with `settings` until done (onetime), until SIGINT/SIGTERM, or in exec mode
/// until the service exits.
pub async fn run(settings: Settings) -> ExitCode {
    let Some(mut signals) = Signals::listen() else {
        return ExitCode::FAILURE;
    };
    let open_files = descriptors::raise_open_files_limit();
    // Orphans come to a container's PID 1, and to the subreaper that exec mode makes reconfd.
    let init = nix::unistd::getpid().as_raw() == 1;
    if (init || settings.exec.is_some())
        && let Err(e) = reaper::start(settings.exec.is_some())
    {
        tracing::error!("cannot reap orphans: {e}");
        return ExitCode::FAILURE;
    }
    let status = Status::new();
    if let Err(code) = serve_status(&settings, &status, open_files).await {
        return code;
    }
    let plan = match Plan::build(&settings, Vec::new(), &status) {
        Ok(plan) => plan,
        Err(PlanError::Unusable) => return ExitCode::from(2),
    };
    if settings.mode == RunMode::Onetime {
        if !settings.announcements.is_empty() {
            tracing::warn!("--onetime: the [[announce]] tables are not announced");
        }
        return onetime(plan, settings.exit_code, &mut signals).await;
    }
    // Announcements are read at start only: a SIGHUP leaves them running as they are, so
    // that a reload never takes a key away.
    let Some(announcers) = start_announcers(&settings, &status) else {
        return ExitCode::from(2);
    };
    let mut service = match settings.exec.clone() {
        Some(exec) => match Service::new(exec, plan.command_env) {
            Ok(service) => Some(service),
            Err(e) => {
                tracing::error!("exec: cannot listen for the signals to pass on: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let swaps = service.as_ref().map(Service::swaps);
    // conf.d and the templates as the plan was made from them, looked at again at every
    // interval, as confd reads them again for each run; a change reads everything again,
    // as a SIGHUP does.
    let mut confdir = ConfdirWatch::new(&settings.confdir, settings.interval).await;
    let mut generation = Generation::start(plan, &status, swaps.clone());
    notify::start_watchdog();
    // In exec mode: the first sync is done, but a destination is not there yet.
    let mut start_held = false;
    // Why the settings, conf.d and templates are to be read again, once the select says so.
    let mut reread: Option<&str> = None;
    // Whether the running set was read again since the start, for the first sync's message.
    let mut read_again = false;
    // `Some` when the process ends for a reason of its own, not because it was told to stop.
    let ended = loop {
        tokio::select! {
            () = generation.first_synced() => {
                let summary = generation.summary();
                if read_again {
                    tracing::info!("first sync done of the settings read again: {summary}");
                } else {
                    tracing::info!("first sync done: {summary}");
                }
                status.set_ready();
                notify::ready(&summary);
                if let Some(service) = service.as_mut().filter(|service| !service.started()) {
                    let missing = generation.missing_destinations(settings.noop);
                    start_held = !missing.is_empty();
                    if start_held {
                        tracing::warn!(
                            "exec: the service starts once {} {} written (held back by \
                             min_keys, or failing; see above)",
                            missing.join(", "),
                            if missing.len() == 1 { "is" } else { "are" },
                        );
                    } else if let Err(e) = service.start() {
                        tracing::error!("{e}");
                        break Some(ExitCode::FAILURE);
                    }
                }
            }
            () = exec::next_swap(swaps.as_ref()), if start_held => {
                if let Some(service) = service.as_mut()
                    && generation.missing_destinations(settings.noop).is_empty()
                {
                    start_held = false;
                    if let Err(e) = service.start() {
                        tracing::error!("{e}");
                        break Some(ExitCode::FAILURE);
                    }
                }
            }
            exited = service_exited(&mut service) => {
                // Waited for: its process ID may now be another process's.
                service = None;
                break Some(match exited {
                    // Ended by itself, not by reconfd: a fault of the service, unless it
                    // says all went well.
                    Ok(exit) if exit.success() => {
                        tracing::warn!("exec: the service {}; stopping", exec::describe(exit));
                        ExitCode::SUCCESS
                    }
                    Ok(exit) => {
                        tracing::error!("exec: the service {}; stopping", exec::describe(exit));
                        ExitCode::from(exec::exit_code(exit))
                    }
                    Err(e) => {
                        tracing::error!("exec: cannot wait for the service: {e}");
                        ExitCode::FAILURE
                    }
                });
            }
            _ = signals.terminate.recv() => break None,
            _ = signals.interrupt.recv() => break None,
            _ = signals.hangup.recv() => {
                // Noted before the settings are read, as a change found at an interval is:
                // a change made meanwhile is found next time.
                confdir.look().await;
                reread = Some("SIGHUP");
            }
            changed = confdir.changed() => if changed {
                reread = Some("conf.d or the templates changed");
            }
        }
        let Some(why) = reread.take() else {
            continue;
        };
        tracing::info!("{why}: reading the settings, conf.d and templates again");
        notify::reloading();
        // Reading conf.d and the templates, and looking up an SRV record, may take a while:
        // the watches and `/health` go on meanwhile.
        let current = settings.clone();
        let validated = tokio::task::spawn_blocking(move || plan::validate(&current))
            .await
            .unwrap_or_else(|e| Err(format!("reading the settings failed: {e}")));
        match validated {
            Ok(new_settings) => {
                if new_settings.exec != settings.exec {
                    tracing::warn!(
                        "{why}: the exec settings changed; the service keeps running as it was \
                         started until reconfd starts again"
                    );
                }
                let previous = generation.stop().await;
                match Plan::build(&new_settings, previous, &status) {
                    Ok(plan) => {
                        generation = Generation::start(plan, &status, swaps.clone());
                        read_again = true;
                        status.reloaded(None);
                        confdir
                            .follow(&new_settings.confdir, new_settings.interval)
                            .await;
                        tracing::info!("{why}: new settings applied");
                    }
                    // Validation succeeded a moment ago; only a store client that cannot be
                    // built now fails here.
                    Err(PlanError::Unusable) => {
                        if let Some(service) = service {
                            service.stop().await;
                        }
                        return ExitCode::FAILURE;
                    }
                }
            }
            Err(reason) => {
                tracing::error!("{why}: keeping the current settings: {reason}");
                status.reloaded(Some(&reason));
                notify::ready(&generation.summary());
            }
        }
    };
    // The controllers finish the swap or reload in progress and then end; a render in
    // progress is abandoned. The service is stopped meanwhile.
    tracing::info!("stopping");
    notify::stopping();
    let service_stopped = async {
        match service {
            Some(service) => service.stop().await,
            None => None,
        }
    };
    // The keys go first: what announces this host must not outlive its leaving.
    if let Some(announcers) = announcers {
        announcers.stop().await;
    }
    let (stopped, _) = tokio::join!(service_stopped, generation.stop());
    if let Some(code) = ended {
        return code;
    }
    match stopped {
        Some(Ok(exit)) => {
            tracing::info!("exec: the service {}", exec::describe(exit));
            ExitCode::from(exec::exit_code(exit))
        }
        Some(Err(e)) => {
            tracing::error!("exec: cannot wait for the service: {e}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}

/// A confdir's resource files and templates, looked at every interval for a change.
struct ConfdirWatch {
    confdir: PathBuf,
    /// The state the running plan was made from.
    seen: ConfdirState,
    /// A state not taken (a file emptied), so that it is reported once.
    held_back: Option<ConfdirState>,
    ticks: tokio::time::Interval,
}

impl ConfdirWatch {
    /// `confdir` as it is now, to be looked at every `interval`.
    async fn new(confdir: &Path, interval: Duration) -> ConfdirWatch {
        let mut watch = ConfdirWatch {
            confdir: confdir.to_path_buf(),
            seen: ConfdirState::default(),
            held_back: None,
            ticks: ticks(interval),
        };
        watch.look().await;
        watch
    }

    /// Takes `confdir`, looked at every `interval`, from now on (settings read again).
    async fn follow(&mut self, confdir: &Path, interval: Duration) {
        if confdir != self.confdir {
            self.confdir = confdir.to_path_buf();
            self.look().await;
        }
        if interval != self.ticks.period() {
            self.ticks = ticks(interval);
        }
    }

    /// The confdir as it is now: a walk of directories, off the runtime thread.
    async fn read(&self) -> ConfdirState {
        let confdir = self.confdir.clone();
        tokio::task::spawn_blocking(move || ConfdirState::read(&confdir))
            .await
            .unwrap_or_default()
    }

    /// Notes the confdir as it is now, as the plan about to be made reads it.
    async fn look(&mut self) {
        self.seen = self.read().await;
    }

    /// Waits for the next interval; true when the confdir changed since it was last noted and
    /// has then stayed as it is for [`CONFDIR_SETTLE`]. What it finds is noted only when it
    /// returns true, so a change it was looking at when the caller's `select!` took another
    /// branch (the sync after a reload, say) is found again at the next interval.
    async fn changed(&mut self) -> bool {
        self.ticks.tick().await;
        let mut now = self.read().await;
        if now == self.seen || Some(&now) == self.held_back.as_ref() {
            return false;
        }
        loop {
            tokio::time::sleep(CONFDIR_SETTLE).await;
            let again = self.read().await;
            if again == now {
                break;
            }
            now = again;
        }
        if let Some(emptied) = now.emptied_since(&self.seen) {
            tracing::warn!(
                "{} is empty now: taken for a file being written, not read (a SIGHUP reads it \
                 as it is; write templates under another name and rename them into place)",
                emptied.display()
            );
            self.held_back = Some(now);
            return false;
        }
        self.held_back = None;
        self.seen = now;
        true
    }
}

/// How long conf.d and the templates must stay as they are before a change is read: an editor
/// that truncates a template and then writes it would otherwise have an empty or half-written
/// template taken, rendered and swapped in.
const CONFDIR_SETTLE: Duration = Duration::from_millis(500);

/// Ticks every `interval`, the first one an interval from now.
fn ticks(interval: Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// How the exec mode's service exited; never without one.
async fn service_exited(
    service: &mut Option<Service>,
) -> std::io::Result<std::process::ExitStatus> {
    match service {
        Some(service) => service.exited().await,
        None => std::future::pending().await,
    }
}

/// Runs `reconfd announce`: keeps `settings`' announcements until SIGTERM or SIGINT, then
/// withdraws them and exits 0; 2 when they cannot be announced.
pub async fn announce(settings: Settings) -> ExitCode {
    if settings.mode == RunMode::Onetime {
        // An announcement lasts while its announcer runs: one pass would be gone at once.
        eprintln!(
            "reconfd: announce keeps its key until it is stopped; --onetime does not apply to it"
        );
        return ExitCode::from(2);
    }
    let Some(mut signals) = Signals::listen() else {
        return ExitCode::FAILURE;
    };
    let open_files = descriptors::raise_open_files_limit();
    let status = Status::new();
    if let Err(code) = serve_status(&settings, &status, open_files).await {
        return code;
    }
    let Some(Some(announcers)) = start_announcers(&settings, &status) else {
        return ExitCode::from(2);
    };
    status.set_ready();
    notify::ready("announcing");
    notify::start_watchdog();
    loop {
        tokio::select! {
            _ = signals.terminate.recv() => break,
            _ = signals.interrupt.recv() => break,
            // Nothing to read again: the announcement is on the command line.
            _ = signals.hangup.recv() => tracing::info!("SIGHUP: nothing to reload"),
        }
    }
    tracing::info!("stopping");
    notify::stopping();
    announcers.stop().await;
    ExitCode::SUCCESS
}

/// Serves metrics, health and the status page on `--listen`, if given; exit status 2 when the
/// address cannot be bound.
async fn serve_status(
    settings: &Settings,
    status: &Status,
    open_files: u64,
) -> Result<(), ExitCode> {
    let Some(address) = settings.listen else {
        return Ok(());
    };
    match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => {
            // The port the system chose for port 0.
            let bound = listener.local_addr().unwrap_or(address);
            tracing::info!("serving metrics and status on http://{bound}/");
            tokio::spawn(status::serve(listener, status.clone(), open_files));
            Ok(())
        }
        Err(e) => {
            tracing::error!("--listen {address}: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// Starts the announcements of `settings`, if any: `Some(None)` when there are none, `None`
/// (logged) when they cannot be announced.
fn start_announcers(settings: &Settings, status: &Status) -> Option<Option<Announcers>> {
    let Some(backend) = settings
        .backend
        .as_ref()
        .filter(|_| !settings.announcements.is_empty())
    else {
        return Some(None);
    };
    match Announcers::start(
        backend,
        &settings.announcements,
        CommandEnv::passing(&settings.command_env),
        status,
    ) {
        Ok(announcers) => Some(Some(announcers)),
        Err(e) => {
            tracing::error!("{e}");
            None
        }
    }
}

/// Runs every controller once; the exit status says whether every resource is in sync, and
/// with `drift_code` (`--exit-code`), 3 when a destination would change.
async fn onetime(plan: Plan, drift_code: bool, signals: &mut Signals) -> ExitCode {
    let mut failures = plan.failures;
    let mut would_change = 0;
    let mut tasks = JoinSet::new();
    for mut controller in plan.controllers {
        tasks.spawn(async move { controller.onetime().await });
    }
    loop {
        tokio::select! {
            finished = tasks.join_next() => match finished {
                Some(Ok(Tally { failed, would_change: changes })) => {
                    failures += failed;
                    would_change += changes;
                }
                Some(Err(e)) => {
                    tracing::error!("a store's run ended abnormally: {e}");
                    failures += 1;
                }
                None => break,
            },
            _ = signals.terminate.recv() => return interrupted(tasks, "SIGTERM").await,
            _ = signals.interrupt.recv() => return interrupted(tasks, "SIGINT").await,
        }
    }
    if failures > 0 {
        ExitCode::FAILURE
    } else if drift_code && would_change > 0 {
        tracing::info!(
            "{would_change} {} would change",
            plural(would_change, "destination", "destinations")
        );
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

/// Ends an interrupted onetime run: every controller stops where it is. A check or reload
/// command still running is killed with its process group (commands run in groups of their
/// own, which the signal did not reach), a stage file being checked is removed, and no
/// destination is half-written. File work in progress (a stage file being written or flushed)
/// cannot be stopped; it gets [`FILE_WORK_GRACE`] to end and remove its stage files.
async fn interrupted(mut tasks: JoinSet<Tally>, signal: &str) -> ExitCode {
    tracing::error!("interrupted by {signal}");
    tasks.shutdown().await;
    if !reconcile::file_work_ended(FILE_WORK_GRACE).await {
        tracing::warn!(
            "file work still running {} after {signal} (a hung filesystem?); a stage file may \
             be left beside its destination until the next run removes it",
            humantime::format_duration(FILE_WORK_GRACE)
        );
    }
    ExitCode::FAILURE
}

/// The controllers of one set of settings, running until stopped.
struct Generation {
    tasks: JoinSet<Controller>,
    stop: watch::Sender<bool>,
    /// Receives a message from each controller after its first full sync.
    first_syncs: mpsc::UnboundedReceiver<()>,
    unsynced: usize,
    /// The first sync was reported.
    announced: bool,
    resources: usize,
    stores: usize,
    failures: usize,
    /// Every resource's destination.
    destinations: Vec<PathBuf>,
}

impl Generation {
    /// Starts every controller of `plan`, each under a supervisor that restarts it after a
    /// panic; `swaps`, in exec mode, hears of each sync that swapped a file.
    fn start(plan: Plan, status: &Status, swaps: Option<Swaps>) -> Generation {
        let (stop, stopped) = watch::channel(false);
        let (synced, first_syncs) = mpsc::unbounded_channel();
        let stores = plan.controllers.len();
        let resources = plan
            .controllers
            .iter()
            .map(|controller| controller.resources().count())
            .sum();
        let destinations = plan
            .controllers
            .iter()
            .flat_map(|controller| controller.resources().map(|r| r.dest.clone()))
            .collect();
        let mut tasks = JoinSet::new();
        for controller in plan.controllers {
            let shutdown = Shutdown::new(stopped.clone());
            tasks.spawn(controller.supervise(
                shutdown,
                synced.clone(),
                swaps.clone(),
                status.clone(),
            ));
        }
        notify::status(&format!(
            "reading {stores} {}",
            plural(stores, "store", "stores")
        ));
        Generation {
            tasks,
            stop,
            first_syncs,
            unsynced: stores,
            announced: false,
            resources,
            stores,
            failures: plan.failures,
            destinations,
        }
    }

    /// The destinations not written yet, as the exec mode's service must not start without
    /// them; none with `--noop`, which writes none.
    fn missing_destinations(&self, noop: bool) -> Vec<String> {
        if noop {
            return Vec::new();
        }
        self.destinations
            .iter()
            .filter(|dest| !dest.exists())
            .map(|dest| dest.display().to_string())
            .collect()
    }

    /// Returns once, when every controller has completed its first full sync.
    async fn first_synced(&mut self) {
        if self.announced {
            return std::future::pending().await;
        }
        while self.unsynced > 0 {
            // A controller that ended without syncing (it was stopped) never makes the
            // daemon ready.
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
            "{} {} from {} {}, {} failed to load",
            self.resources,
            plural(self.resources, "resource", "resources"),
            self.stores,
            plural(self.stores, "store", "stores"),
            self.failures
        )
    }

    /// Stops every controller once its swap or reload in progress is done, and returns them.
    async fn stop(mut self) -> Vec<Controller> {
        // The controllers hold a receiver each until they end.
        let _ = self.stop.send(true);
        let mut controllers = Vec::new();
        while let Some(finished) = self.tasks.join_next().await {
            match finished {
                Ok(controller) => controllers.push(controller),
                Err(e) => tracing::error!("a store's loop ended abnormally: {e}"),
            }
        }
        controllers
    }
}

/// The signals the process handles, listened to for the whole run.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    /// The signals, listened to from now on; `None`, logged, when they cannot be.
    fn listen() -> Option<Signals> {
        let listen = || -> std::io::Result<Signals> {
            Ok(Signals {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
                hangup: signal(SignalKind::hangup())?,
            })
        };
        listen()
            .inspect_err(|e| tracing::error!("cannot listen for signals: {e}"))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A confdir with one resource file and one template.
    fn confdir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("conf.d")).expect("conf.d");
        std::fs::create_dir_all(dir.path().join("templates")).expect("templates");
        std::fs::write(dir.path().join("conf.d/a.toml"), "[template]\n").expect("resource");
        std::fs::write(dir.path().join("templates/a.tmpl"), "a\n").expect("template");
        dir
    }

    #[tokio::test]
    async fn a_change_looked_at_when_the_wait_is_dropped_is_found_again() {
        let dir = confdir();
        let interval = Duration::from_millis(200);
        let mut watch = ConfdirWatch::new(dir.path(), interval).await;
        std::fs::write(dir.path().join("templates/a.tmpl"), "b\n").expect("edit");
        // Dropped in the middle of its settling, as a `select!` drops it when another branch
        // wins.
        let dropped = tokio::time::timeout(interval + CONFDIR_SETTLE / 5, watch.changed()).await;
        assert!(dropped.is_err(), "it was still settling");
        assert!(watch.changed().await, "the change is found again");
        std::fs::write(dir.path().join("conf.d/b.toml"), "[template]\n").expect("new file");
        assert!(watch.changed().await, "a new resource file");
    }

    #[tokio::test]
    async fn a_template_emptied_is_not_taken_until_it_is_written() {
        let dir = confdir();
        let mut watch = ConfdirWatch::new(dir.path(), Duration::from_millis(100)).await;
        let template = dir.path().join("templates/a.tmpl");
        std::fs::write(&template, "").expect("truncated");
        assert!(!watch.changed().await, "an emptied template is held back");
        std::fs::write(&template, "written\n").expect("written");
        assert!(watch.changed().await, "taken once written");
    }
}
