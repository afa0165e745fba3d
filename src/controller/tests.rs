//! The controller against a scripted in-memory store, under tokio's paused clock: timers
//! (backoff, retries, time limits, resyncs) pass instantly, so each test runs in well under a
//! second with no server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::*;
use crate::command::CommandEnv;
use crate::exec::Swaps;
use crate::store::memory::{self, NextWatch};
use crate::store::{Change, StoreErrorKind};

/// A confdir in a temp dir whose resources render into `out/`.
struct Confdir {
    dir: tempfile::TempDir,
}

impl Confdir {
    fn new() -> Confdir {
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in ["conf.d", "templates", "out"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        Confdir { dir }
    }

    /// Resource `name` rendering `template` from `keys` into `out/<name>`, with the resource
    /// lines `extra`.
    fn resource(&self, name: &str, template: &str, keys: &[&str], extra: &str) -> Arc<Prepared> {
        self.resource_with_limit(name, template, keys, extra, DEFAULT_RENDER_TIMEOUT)
    }

    fn resource_with_limit(
        &self,
        name: &str,
        template: &str,
        keys: &[&str],
        extra: &str,
        timeout: Duration,
    ) -> Arc<Prepared> {
        let root = self.dir.path();
        std::fs::write(root.join("templates").join(name), template).expect("template");
        let keys: Vec<String> = keys.iter().map(|key| format!("{key:?}")).collect();
        let file = root.join("conf.d").join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "[template]\nsrc = \"{name}\"\ndest = \"out/{name}\"\nkeys = [{}]\n{extra}",
                keys.join(", ")
            ),
        )
        .expect("resource");
        let mut resources =
            crate::resource::load(&file, &root.join("templates"), "").expect("valid resource");
        let resource = resources.remove(0);
        let renderer = Renderer::from_file(&resource.src).expect("valid template");
        Arc::new(Prepared {
            resource,
            renderer,
            limits: RenderLimits {
                timeout,
                max_size: DEFAULT_RENDER_MAX_SIZE,
            },
        })
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.out(name)).ok()
    }
}

/// A running controller and what the test holds of it.
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Controller>,
    first_sync: mpsc::UnboundedReceiver<()>,
    /// Told of each sync that swapped a file, as the exec mode's service is.
    swaps: Swaps,
    status: Status,
}

impl Running {
    async fn stop(self) -> Controller {
        let _ = self.stop.send(true);
        self.task.await.expect("the controller returns")
    }
}

fn start(
    store: memory::MemoryStore,
    prepared: Vec<Arc<Prepared>>,
    interval: Duration,
    polling: bool,
) -> Running {
    let status = Status::new();
    let controller = Controller::new(
        Box::new(store),
        Backend::Env,
        prepared,
        SyncOptions {
            reconcile: Options {
                noop: false,
                sync_only: false,
                keep_stage_file: false,
                command_env: CommandEnv::default(),
            },
            interval,
            polling,
        },
        status.clone(),
    );
    let (stop, stopped) = watch::channel(false);
    let (synced, first_sync) = mpsc::unbounded_channel();
    let swaps = Swaps::default();
    let task = tokio::spawn(controller.supervise(
        Shutdown::new(stopped),
        synced,
        Some(swaps.clone()),
        status.clone(),
    ));
    Running {
        stop,
        task,
        first_sync,
        swaps,
        status,
    }
}

/// Waits until `path` holds `expected` and the controller has recorded that sync in its
/// status (the swap runs on the blocking pool, so the file may show first), moving the paused
/// clock on meanwhile: it does not move by itself while a render thread runs.
async fn wait_for_file(status: &Status, path: &Path, expected: &str) {
    let md5 = crate::reconcile::md5_hex(expected.as_bytes());
    loop {
        let recorded = status.status_json()["resources"]
            .as_array()
            .is_some_and(|resources| resources.iter().any(|r| r["md5"] == md5.as_str()));
        if recorded && std::fs::read_to_string(path).is_ok_and(|text| text == expected) {
            return;
        }
        tick().await;
    }
}

/// Lets the other tasks run, then moves the paused clock on by 10 ms.
async fn tick() {
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(10)).await;
}

/// How many renders of resource `name` ended with `result`, from `/metrics`.
fn renders(status: &Status, name: &str, result: &str) -> u64 {
    let text = status.metrics_text();
    text.lines()
        .filter(|line| line.starts_with("reconfd_renders_total{"))
        .filter(|line| line.contains(&format!("{name}.toml\"")))
        .filter(|line| line.contains(&format!("result=\"{result}\"")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

const VALUE: &str = "{{ getv(key=\"/app/value\") }}";

#[tokio::test(start_paused = true)]
async fn a_burst_of_changes_gives_one_render_with_the_final_value() {
    let confdir = Confdir::new();
    let app = confdir.resource("app", VALUE, &["/app"], "");
    let (store, script) = memory::store(&[("/app/value", "0")]);
    let mut running = start(store, vec![app], Duration::from_secs(600), false);
    running.first_sync.recv().await.expect("first sync");
    script.wait_for_watches(1).await;
    assert_eq!(confdir.read("app").as_deref(), Some("0"));
    // The whole burst is queued before the controller runs again.
    for value in 1..=100 {
        script.put("/app/value", &value.to_string()).await;
    }
    wait_for_file(&running.status, &confdir.out("app"), "100").await;
    assert_eq!(
        renders(&running.status, "app", "updated"),
        2,
        "the first sync and one render for the burst"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn only_a_sync_that_swapped_a_file_tells_the_service() {
    let confdir = Confdir::new();
    let app = confdir.resource("app", VALUE, &["/app"], "");
    let (store, script) = memory::store(&[("/app/value", "0"), ("/app/other", "x")]);
    let mut running = start(store, vec![app], Duration::from_secs(600), false);
    running.first_sync.recv().await.expect("first sync");
    script.wait_for_watches(1).await;
    assert!(running.swaps.take(), "the first sync wrote the file");
    assert!(!running.swaps.take(), "once");
    // A change the rendered file does not show syncs nothing.
    script.put("/app/other", "y").await;
    while renders(&running.status, "app", "in_sync") == 0 {
        tick().await;
    }
    assert!(!running.swaps.take(), "nothing was swapped");
    script.put("/app/value", "1").await;
    wait_for_file(&running.status, &confdir.out("app"), "1").await;
    assert!(running.swaps.take(), "the new file was swapped in");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_event_older_than_the_resync_is_dropped() {
    let confdir = Confdir::new();
    let app = confdir.resource("app", VALUE, &["/app"], "");
    let (store, script) = memory::store(&[("/app/value", "first")]);
    let mut running = start(store, vec![app], Duration::from_secs(60), false);
    running.first_sync.recv().await.expect("first sync");
    script.wait_for_watches(1).await;
    // The store moves on while the watch says nothing; the resync reads it at revision 5.
    for value in ["2", "3", "4", "resynced"] {
        script.put_quietly("/app/value", value);
    }
    tokio::time::advance(Duration::from_secs(61)).await;
    wait_for_file(&running.status, &confdir.out("app"), "resynced").await;
    // A change from before that read, delivered late, must not undo it.
    let stale = Change::Put {
        key: "/app/value".to_string(),
        value: "stale".to_string(),
    };
    script.send(Some(3), vec![stale]).await;
    script.put("/app/value", "newer").await;
    wait_for_file(&running.status, &confdir.out("app"), "newer").await;
    assert_eq!(renders(&running.status, "app", "updated"), 3);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_watch_that_ends_at_once_backs_off() {
    let confdir = Confdir::new();
    let app = confdir.resource("app", VALUE, &["/app"], "");
    let (store, script) = memory::store(&[("/app/value", "0")]);
    script.next_watches((0..1000).map(|_| NextWatch::EndAtOnce));
    let started = tokio::time::Instant::now();
    let mut running = start(store, vec![app], Duration::from_secs(3600), false);
    running.first_sync.recv().await.expect("first sync");
    script.wait_for_watches(12).await;
    // Doubling from 0.2 s (half of it at least, with jitter) up to 1 s: twelve attempts
    // take several seconds, where a tight loop would take none.
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "12 watches opened within {:?}",
        started.elapsed()
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_store_is_read_again_with_backoff_and_files_stay() {
    let confdir = Confdir::new();
    std::fs::write(confdir.out("app"), "kept").expect("write");
    let app = confdir.resource("app", VALUE, &["/app"], "");
    let (store, script) = memory::store(&[("/app/value", "new")]);
    script.fail_fetches(5);
    let mut running = start(store, vec![app], Duration::from_secs(600), false);
    running.first_sync.recv().await.expect("first sync");
    assert_eq!(
        script.fetches(),
        6,
        "five failures, then the read that worked"
    );
    assert_eq!(confdir.read("app").as_deref(), Some("new"));
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_is_retried_without_a_new_change() {
    let confdir = Confdir::new();
    let app = confdir.resource(
        "app",
        VALUE,
        &["/app"],
        "", // dest is out/app; the test takes `out` away below
    );
    std::fs::remove_dir(confdir.dir.path().join("out")).expect("rmdir");
    let (store, _script) = memory::store(&[("/app/value", "v1")]);
    let running = start(store, vec![app], Duration::from_secs(3600), false);
    // The first attempt fails: its directory is missing. It is scheduled again.
    loop {
        if renders(&running.status, "app", "write_failed") >= 2 {
            break;
        }
        tick().await;
    }
    let status = running.status.status_json();
    let entry = &status["resources"][0];
    assert!(
        entry["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("out")),
        "{status}"
    );
    assert!(entry["next_attempt"].is_string(), "{status}");
    std::fs::create_dir(confdir.dir.path().join("out")).expect("mkdir");
    wait_for_file(&running.status, &confdir.out("app"), "v1").await;
    let status = running.status.status_json();
    assert!(status["resources"][0]["next_attempt"].is_null(), "{status}");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_resource_keeps_its_backoff_through_the_interval_reads() {
    let confdir = Confdir::new();
    let app = confdir.resource("app", VALUE, &["/app"], "");
    std::fs::remove_dir(confdir.dir.path().join("out")).expect("rmdir");
    let (store, _script) = memory::store(&[("/app/value", "v1")]);
    // The store read every second: each read must not sync the failing resource again.
    let running = start(store, vec![app], Duration::from_secs(1), true);
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < until {
        tick().await;
    }
    // The first attempt, then retries after about 1, 2, 4, 8 s (each drawn between half
    // and all of it): at most 6 attempts in 20 s, where a sync at every read makes 20.
    let attempts = renders(&running.status, "app", "write_failed");
    assert!((2..=7).contains(&attempts), "{attempts} attempts in 20 s");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_template_error_waits_for_new_data_instead_of_retrying() {
    let confdir = Confdir::new();
    let app = confdir.resource("app", VALUE, &["/app"], "");
    let (store, script) = memory::store(&[]);
    let mut running = start(store, vec![app], Duration::from_secs(3600), false);
    running.first_sync.recv().await.expect("first sync");
    script.wait_for_watches(1).await;
    tokio::time::advance(Duration::from_secs(600)).await;
    tokio::task::yield_now().await;
    assert_eq!(renders(&running.status, "app", "render_failed"), 1);
    script.put("/app/value", "here").await;
    wait_for_file(&running.status, &confdir.out("app"), "here").await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn polling_reads_every_interval() {
    let confdir = Confdir::new();
    let app = confdir.resource("app", VALUE, &["/app"], "");
    let (store, script) = memory::store(&[("/app/value", "1")]);
    let mut running = start(store, vec![app], Duration::from_secs(30), true);
    running.first_sync.recv().await.expect("first sync");
    script.put_quietly("/app/value", "2");
    wait_for_file(&running.status, &confdir.out("app"), "2").await;
    assert_eq!(script.watches(), 0, "polling never watches");
    assert_eq!(script.fetches(), 2);
    running.stop().await;
}

const RUNAWAY: &str =
    "{% for i in range(end=100000) %}{% for j in range(end=100000) %}{% endfor %}{% endfor %}";

#[tokio::test(start_paused = true)]
async fn a_runaway_render_holds_back_neither_its_round_nor_another_controller() {
    let confdir = Confdir::new();
    // A limit far beyond the test: only a render running beside the runaway one gets the
    // other resource synced.
    let limit = Duration::from_secs(3600);
    let slow = confdir.resource_with_limit("slow", RUNAWAY, &["/app"], "", limit);
    let fast = confdir.resource("fast", VALUE, &["/app"], "");
    let other = confdir.resource("other", "{{ getv(key=\"/other\") }}", &["/other"], "");
    let (store, script) = memory::store(&[("/app/value", "1")]);
    let (other_store, _other_script) = memory::store(&[("/other", "o")]);
    let began = tokio::time::Instant::now();
    let running = start(store, vec![slow, fast], Duration::from_secs(3600), false);
    let other_running = start(other_store, vec![other], Duration::from_secs(3600), false);
    // Another controller is not held back at all, nor is a resource of the same round.
    wait_for_file(&other_running.status, &confdir.out("other"), "o").await;
    wait_for_file(&running.status, &confdir.out("fast"), "1").await;
    script.wait_for_watches(1).await;
    script.put("/app/value", "2").await;
    wait_for_file(&running.status, &confdir.out("fast"), "2").await;
    // Not by waiting for the runaway render's time limit (on the paused clock).
    assert!(began.elapsed() < limit / 2, "{:?}", began.elapsed());
    assert_eq!(confdir.read("slow"), None);
    other_running.stop().await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_render_past_its_time_limit_fails_and_names_the_limit() {
    let confdir = Confdir::new();
    std::fs::write(confdir.out("slow"), "kept").expect("write");
    let slow =
        confdir.resource_with_limit("slow", RUNAWAY, &["/app"], "", Duration::from_millis(300));
    let (store, _script) = memory::store(&[("/app/value", "1")]);
    let running = start(store, vec![slow], Duration::from_secs(3600), false);
    // The render thread keeps the paused clock from moving by itself. The limit counts from
    // the moment the thread starts the render, which the clock here does not see, so the
    // failure may come with the first sync or, after it, as a late batch of its own.
    let mut status = running.status.status_json();
    // A minute on the paused clock, far past the limit.
    for _ in 0..600 {
        if status["resources"][0]["last_error"].is_string() {
            break;
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        status = running.status.status_json();
    }
    let error = status["resources"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("took longer than 300ms"), "{error}");
    assert!(error.contains("render_timeout"), "{error}");
    assert_eq!(confdir.read("slow").as_deref(), Some("kept"));
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn output_past_the_size_limit_fails_and_the_destination_stays() {
    let confdir = Confdir::new();
    std::fs::write(confdir.out("big"), "kept").expect("write");
    let big = confdir.resource(
        "big",
        "{% for i in range(end=100000) %}0123456789{% endfor %}",
        &["/app"],
        "",
    );
    let big = Arc::new(Prepared {
        resource: big.resource.clone(),
        renderer: Renderer::from_file(&big.resource.src).expect("template"),
        limits: RenderLimits {
            timeout: DEFAULT_RENDER_TIMEOUT,
            max_size: 1024,
        },
    });
    let (store, _script) = memory::store(&[]);
    let mut running = start(store, vec![big], Duration::from_secs(3600), false);
    running.first_sync.recv().await.expect("first sync");
    let status = running.status.status_json();
    let error = status["resources"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("past 1.0 KiB"), "{error}");
    assert!(error.contains("render_max_size"), "{error}");
    assert_eq!(confdir.read("big").as_deref(), Some("kept"));
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_does_not_wait_for_a_runaway_render() {
    let confdir = Confdir::new();
    let slow = confdir.resource("slow", RUNAWAY, &["/app"], "");
    let (store, _script) = memory::store(&[]);
    let running = start(store, vec![slow], Duration::from_secs(3600), false);
    tokio::task::yield_now().await;
    // Returns although the render's time limit is far away and the clock stands still.
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_loop_is_caught_reported_and_the_loop_starts_over() {
    let confdir = Confdir::new();
    let app = confdir.resource("app", VALUE, &["/app"], "");
    let (store, script) = memory::store(&[("/app/value", "1")]);
    let mut running = start(store, vec![app], Duration::from_secs(60), false);
    running.first_sync.recv().await.expect("first sync");
    running.status.set_ready();
    script.panic_then_fail_fetches(3);
    // The safety resync's read panics; the loop starts over and reads again until it can.
    while script.fetches() < 3 {
        tick().await;
    }
    let why = running
        .status
        .readiness()
        .expect_err("not ready while the loop is down");
    assert!(why.contains("memory: scripted panic"), "{why}");
    script.put_quietly("/app/value", "2");
    wait_for_file(&running.status, &confdir.out("app"), "2").await;
    assert_eq!(running.status.readiness(), Ok(()));
    running.stop().await;
}

/// Log lines written while it is held, captured for the test's thread (the controller's
/// tasks run on it: the test runtime has one thread).
struct Logs {
    text: Arc<std::sync::Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Logs {
    fn capture() -> Logs {
        let text: Arc<std::sync::Mutex<Vec<u8>>> = Arc::default();
        let writer = Arc::clone(&text);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(Arc::clone(&writer)))
            .finish();
        Logs {
            text,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().expect("log lock")).into_owned()
    }
}

struct LogWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How many times a store whose reads all fail with `kind` is read in a simulated minute.
async fn reads_in_a_minute_failing_with(kind: StoreErrorKind) -> usize {
    let confdir = Confdir::new();
    let app = confdir.resource("app", VALUE, &["/app"], "");
    let (store, script) = memory::store(&[("/app/value", "new")]);
    script.fail_fetches_with(kind, usize::MAX);
    let running = start(store, vec![app], Duration::from_secs(3600), false);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let reads = script.fetches();
    running.stop().await;
    reads
}

#[tokio::test(start_paused = true)]
async fn a_store_that_refuses_is_read_again_slowly_and_one_out_of_reach_quickly() {
    // From 5 s (2.5 s at least, with jitter) doubling up to 60 s: the first read and four
    // or five more in a minute. From 0.2 s doubling up to 1 s: more than one a second.
    for kind in [
        StoreErrorKind::Auth,
        StoreErrorKind::Rejected,
        StoreErrorKind::Invalid,
    ] {
        let reads = reads_in_a_minute_failing_with(kind).await;
        assert!((4..=6).contains(&reads), "{kind}: {reads} reads");
    }
    for kind in [StoreErrorKind::Unreachable, StoreErrorKind::File] {
        let reads = reads_in_a_minute_failing_with(kind).await;
        assert!(reads >= 55, "{kind}: {reads} reads");
    }
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_are_logged_as_such_once_and_the_files_stay() {
    let logs = Logs::capture();
    let confdir = Confdir::new();
    std::fs::write(confdir.out("app"), "kept").expect("write");
    let app = confdir.resource("app", VALUE, &["/app"], "");
    let (store, script) = memory::store(&[("/app/value", "new")]);
    script.fail_fetches_with(StoreErrorKind::Auth, 5);
    let mut running = start(store, vec![app], Duration::from_secs(3600), false);
    while script.fetches() < 5 {
        tick().await;
    }
    assert_eq!(confdir.read("app").as_deref(), Some("kept"));
    running.first_sync.recv().await.expect("first sync");
    assert_eq!(confdir.read("app").as_deref(), Some("new"));
    let log = logs.text();
    assert_eq!(
        log.matches(
            "memory store refused the credentials: memory: scripted auth failure; \
                     keeping the current files and retrying at least every 1m"
        )
        .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("unavailable"), "{log}");
    assert_eq!(
        log.matches("store accepts the credentials again").count(),
        1,
        "{log}"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_outage_that_turns_into_a_refusal_says_so_and_slows_down() {
    let logs = Logs::capture();
    let confdir = Confdir::new();
    let app = confdir.resource("app", VALUE, &["/app"], "");
    let (store, script) = memory::store(&[("/app/value", "new")]);
    script.fail_fetches(usize::MAX);
    let running = start(store, vec![app], Duration::from_secs(3600), false);
    tokio::time::sleep(Duration::from_secs(10)).await;
    // The store is back, and refuses the credentials.
    script.fail_fetches_with(StoreErrorKind::Auth, usize::MAX);
    let before = script.fetches();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let refused = script.fetches() - before;
    assert!((4..=6).contains(&refused), "{refused} reads");
    let log = logs.text();
    assert_eq!(log.matches("memory store unavailable").count(), 1, "{log}");
    assert_eq!(
        log.matches("memory store refused the credentials").count(),
        1,
        "{log}"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_watch_refused_is_asked_again_slowly() {
    let confdir = Confdir::new();
    let app = confdir.resource("app", VALUE, &["/app"], "");
    let (store, script) = memory::store(&[("/app/value", "1")]);
    script.next_watches((0..100).map(|_| NextWatch::Fail(StoreErrorKind::Auth)));
    let mut running = start(store, vec![app], Duration::from_secs(3600), false);
    running.first_sync.recv().await.expect("first sync");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let calls = script.watch_calls();
    assert!((4..=6).contains(&calls), "{calls} watches asked for");
    running.stop().await;
}
