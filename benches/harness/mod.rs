//! The scenarios every store's benchmark runs, against a store the benchmark started:
//! change → file latency, fan-out to many resources, an idle daemon, and `--onetime`.
//!
//! A store is described by the flags that point reconfd at it and a function that writes a
//! key; everything else is the same for every store.

#![allow(dead_code)] // each benchmark uses the scenarios its issue asks for

pub mod measure;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

use crate::common::{Daemon, Fixture, wait_for};

/// The template of the latency scenarios: one `server` line per key under the prefix.
pub const TEMPLATE: &str =
    "{% for kv in gets(key=\"/*\") %}server {{ kv.key | base }} {{ kv.value }} check\n{% endfor %}";

/// The keys `<prefix>/webNNNNN` = an address, `count` of them.
pub fn keys(prefix: &str, count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            (
                format!("{prefix}/web{i:05}"),
                format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256),
            )
        })
        .collect()
}

/// The time `put` takes on its own, as a reference for the change → file figures.
pub fn put_latency(put: &dyn Fn(&str, &str), changes: usize) -> Vec<Duration> {
    (0..changes)
        .map(|i| {
            let started = Instant::now();
            put("/bench/reference", &i.to_string());
            started.elapsed()
        })
        .collect()
}

/// Whether the scenario named `name` runs: every one when the command line names none
/// (`cargo bench --bench etcd`), else those whose name contains one of the words given
/// (`cargo bench --bench etcd -- fanout idle`).
pub fn selected(name: &str) -> bool {
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    words.is_empty() || words.iter().any(|word| name.contains(word.as_str()))
}

/// What a change → file run measured.
pub struct ChangeRun {
    /// From each put to the last destination replaced.
    pub latencies: Vec<Duration>,
    /// Full reads of the store per change, where the store can count them.
    pub ranges_per_change: Option<f64>,
    /// The daemon's peak RSS.
    pub peak_rss_mib: f64,
}

/// Starts `reconfd --watch` with `store_args` and `resources` resources rendering every key
/// under `prefix`, then changes one key `changes` times with `put` and measures until every
/// destination was replaced. `ranges` counts the store's full reads, where it can tell.
pub fn change_to_file(
    store_args: &[&str],
    put: &dyn Fn(&str, &str),
    ranges: Option<&dyn Fn() -> f64>,
    prefix: &str,
    resources: usize,
    changes: usize,
) -> ChangeRun {
    change_to_file_among(store_args, put, ranges, &[prefix], resources, changes, None)
}

/// [`change_to_file`] with resource `i` rendering the keys under `prefixes[i % len]`, so that
/// one daemon watches every prefix; the changes go to `prefixes[0]`, and the destinations of
/// the resources over it are the ones waited for.
/// The destinations go to `out` when given (a tmpfs, say, to take the disk's flushes out of
/// the figure), to the fixture's `out/` otherwise.
pub fn change_to_file_among(
    store_args: &[&str],
    put: &dyn Fn(&str, &str),
    ranges: Option<&dyn Fn() -> f64>,
    prefixes: &[&str],
    resources: usize,
    changes: usize,
    out: Option<&Path>,
) -> ChangeRun {
    let prefix = prefixes[0];
    let fixture = Fixture::new();
    fixture.template("servers.tmpl", TEMPLATE);
    let out = out.map_or_else(|| fixture.path("out"), Path::to_path_buf);
    std::fs::create_dir_all(&out).expect("out dir");
    for index in 0..resources {
        let prefix = prefixes[index % prefixes.len()];
        fixture.resource(
            &format!("r{index:02}"),
            &format!(
                "src = \"servers.tmpl\"\ndest = \"{}/r{index:02}.conf\"\nprefix = \"{prefix}\"\n\
                 keys = [\"/\"]\n",
                out.display()
            ),
        );
    }
    let every_destination: BTreeSet<PathBuf> = (0..resources)
        .map(|index| out.join(format!("r{index:02}.conf")))
        .collect();
    let destinations: BTreeSet<PathBuf> = (0..resources)
        .step_by(prefixes.len())
        .map(|index| out.join(format!("r{index:02}.conf")))
        .collect();
    let renames = Renames::in_dirs([out.as_path()]);

    let mut args = vec!["--watch", "--log-level", "warn"];
    args.extend_from_slice(store_args);
    let daemon = fixture.spawn(&args);
    let all_written = || every_destination.iter().all(|path| path.exists());
    assert!(
        wait_for(Duration::from_secs(60), all_written),
        "initial render\n{}",
        daemon.log()
    );
    std::thread::sleep(Duration::from_millis(500));

    let ranges_before = ranges.map(|count| count());
    let key = format!("{prefix}/web00050");
    let mut latencies = Vec::with_capacity(changes);
    for change in 0..changes {
        renames.forget_earlier();
        let value = format!("10.99.{}.{}:8080", change / 256, change % 256);
        let started = Instant::now();
        put(&key, &value);
        if let Err(missing) = renames.wait_for_all(&destinations, Duration::from_secs(10)) {
            panic!("{missing} files not written\n{}", daemon.log());
        }
        latencies.push(started.elapsed());
        let written = std::fs::read_to_string(destinations.first().expect("a destination"))
            .expect("destination");
        assert!(written.contains(&value), "the new value was rendered");
        // Let the daemon go idle, so each change is measured on its own.
        std::thread::sleep(Duration::from_millis(20));
    }
    let ranges_per_change = ranges
        .zip(ranges_before)
        .map(|(count, before)| (count() - before) / changes as f64);
    let peak_rss_mib = status_kib(&daemon, "VmHWM:") / 1024.0;
    assert_eq!(daemon.terminate(), Some(0));
    ChangeRun {
        latencies,
        ranges_per_change,
        peak_rss_mib,
    }
}

/// The files renamed into some directories, as inotify reports them: how the benchmarks see
/// a destination replaced, at the moment it is (reading files in a loop would measure the
/// loop's interval and take CPU from the daemons).
pub struct Renames {
    /// Kept for as long as the renames are wanted.
    _watcher: notify::RecommendedWatcher,
    renamed: mpsc::Receiver<Vec<PathBuf>>,
}

impl Renames {
    /// Starts watching `dirs` (not their subdirectories).
    pub fn in_dirs<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> Renames {
        let (events, renamed) = mpsc::channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event
                    // A rename is reported twice (`To`, then `Both`); the second can come
                    // after the next change began, so only the first counts.
                    && event.kind == EventKind::Modify(ModifyKind::Name(RenameMode::To))
                {
                    let _ = events.send(event.paths);
                }
            })
            .expect("inotify");
        for dir in dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .expect("watch a directory");
        }
        Renames {
            _watcher: watcher,
            renamed,
        }
    }

    /// Drops the renames seen so far.
    pub fn forget_earlier(&self) {
        while self.renamed.try_recv().is_ok() {}
    }

    /// Waits until every one of `files` was renamed into place, each within `patience` of
    /// the one before; `Err` says how many were not.
    pub fn wait_for_all(&self, files: &BTreeSet<PathBuf>, patience: Duration) -> Result<(), usize> {
        let mut pending = files.clone();
        while !pending.is_empty() {
            let paths = self
                .renamed
                .recv_timeout(patience)
                .map_err(|_| pending.len())?;
            for path in paths {
                pending.remove(&path);
            }
        }
        Ok(())
    }
}

/// An idle watching daemon: RSS and CPU time spent over 10 s with no change.
pub fn idle(store_args: &[&str], prefix: &str) {
    let fixture = Fixture::new();
    fixture.template("servers.tmpl", TEMPLATE);
    fixture.resource(
        "small",
        &format!(
            "src = \"servers.tmpl\"\ndest = \"small.conf\"\nprefix = \"{prefix}\"\nkeys = [\"/\"]\n"
        ),
    );
    let mut args = vec!["--watch"];
    args.extend_from_slice(store_args);
    let daemon = fixture.spawn(&args);
    assert!(wait_for(Duration::from_secs(30), || fixture
        .path("small.conf")
        .exists()));
    std::thread::sleep(Duration::from_secs(1));
    let cpu_before = cpu_ticks(&daemon);
    std::thread::sleep(Duration::from_secs(10));
    let cpu_ticks_spent = cpu_ticks(&daemon) - cpu_before;
    println!(
        "idle watching daemon: RSS {:.1} MiB, CPU {} ticks ({} ms) in 10 s",
        status_kib(&daemon, "VmRSS:") / 1024.0,
        cpu_ticks_spent,
        cpu_ticks_spent * 10
    );
    assert_eq!(daemon.terminate(), Some(0));
    hot_functions_found();
}

/// How much of `scripts/hot-functions.txt` the binary measured has: the list places those
/// functions first at link time, and a list made for other symbol names (another toolchain,
/// updated dependencies) no longer does, which shows as memory here.
fn hot_functions_found() {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/hot-functions.txt");
    let Ok(list) = std::fs::read_to_string(list) else {
        println!("  no hot-function list");
        return;
    };
    let Ok(symbols) = std::process::Command::new("nm")
        .args(["--defined-only", env!("CARGO_BIN_EXE_reconfd")])
        .output()
    else {
        println!("  hot-function list: not checked (no nm)");
        return;
    };
    let symbols = String::from_utf8_lossy(&symbols.stdout);
    let defined: BTreeSet<&str> = symbols
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .collect();
    let wanted: Vec<&str> = list.lines().collect();
    let found = wanted.iter().filter(|name| defined.contains(*name)).count();
    println!(
        "  hot-function list: {found} of its {} names are in this binary (the list holds the \
         names of two build configurations; a binary has at most its own)",
        wanted.len()
    );
}

/// `--onetime` of the repository's HAProxy template over the 10,000 `/proxy/frontend` keys
/// of the store `store_args` point at, out of sync every time.
pub fn onetime(store_args: &[&str], what: &str) {
    let fixture = Fixture::new();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        repo.join("templates/haproxy.cfg.tmpl"),
        fixture.path("templates/haproxy.cfg.tmpl"),
    )
    .expect("template");
    fixture.resource(
        "haproxy",
        "src = \"haproxy.cfg.tmpl\"\ndest = \"haproxy.cfg\"\nkeys = [\"/proxy\"]\n",
    );
    let mut walls = Vec::new();
    let mut peak_rss_kib = 0;
    for _ in 0..30 {
        let _ = std::fs::remove_file(fixture.path("haproxy.cfg"));
        let mut args = vec!["--onetime", "--log-level", "warn"];
        args.extend_from_slice(store_args);
        let (wall, rss) = measure::run(&fixture.command(&args));
        walls.push(wall);
        peak_rss_kib = peak_rss_kib.max(rss);
    }
    let servers = fixture
        .read("haproxy.cfg")
        .lines()
        .filter(|line| line.trim_start().starts_with("server "))
        .count();
    assert_eq!(servers, 10_000);
    report(
        &format!("--onetime, 10,000-key HAProxy template from {what}"),
        &walls,
    );
    println!("  peak RSS {:.1} MiB", peak_rss_kib as f64 / 1024.0);
}

/// A `/proc/<pid>/status` field in KiB, such as `VmRSS:`.
pub fn status_kib(daemon: &Daemon, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id()))
        .expect("status")
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        .expect("field")
}

/// User plus system CPU time of the daemon, in clock ticks (10 ms).
pub fn cpu_ticks(daemon: &Daemon) -> u64 {
    process_cpu_ticks(daemon.child.id())
}

/// User plus system CPU time of process `pid`, in clock ticks (10 ms).
pub fn process_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat format")
        .1
        .split_whitespace()
        .collect();
    let ticks = |index: usize| fields[index].parse::<u64>().expect("ticks");
    ticks(11) + ticks(12)
}

/// Prints p50, p90, p99 and max of `samples`.
pub fn report(what: &str, samples: &[Duration]) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = |p: usize| sorted[(sorted.len() - 1) * p / 100].as_secs_f64() * 1000.0;
    println!(
        "{what}, {} samples: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        sorted.len(),
        at(50),
        at(90),
        at(99),
        at(100)
    );
}

/// The keys every store benchmark reads: 100 under `/bench/small` for the change → file
/// row, 10,000 under `/proxy/frontend` and `/proxy/port` for the `--onetime` row.
pub fn standard_keys() -> Vec<(String, String)> {
    let mut all = keys("/bench/small", 100);
    all.extend(keys("/proxy/frontend", 10_000));
    all.push(("/proxy/port".to_string(), "8080".to_string()));
    all
}

/// The rows a store's benchmark reports, for a store that holds [`standard_keys`]: `put`
/// alone (`put_name`, as a reference), change → file for the 100-key template (300
/// changes), and the 10,000-key `--onetime` (`store_name` in its title).
pub fn standard_rows(
    store_args: &[&str],
    put: &dyn Fn(&str, &str),
    put_name: &str,
    store_name: &str,
) {
    const CHANGES: usize = 300;
    report(
        &format!("{put_name} alone (reference)"),
        &put_latency(put, CHANGES),
    );
    let small = change_to_file(store_args, put, None, "/bench/small", 1, CHANGES);
    report("change → file, 100-key template", &small.latencies);
    println!("  reconfd peak RSS {:.1} MiB", small.peak_rss_mib);
    onetime(store_args, store_name);
}
