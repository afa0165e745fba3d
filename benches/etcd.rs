//! reconfd against a real etcd on loopback: how fast a change reaches the destination file,
//! how much reconfd asks of etcd per change, and what it costs in memory and CPU.
//!
//! Run with `cargo bench --bench etcd`; BENCHMARKS.md records the figures. Scenarios:
//!
//! - change → file written, for a template over 100 keys and over 10,000 keys: the time from
//!   sending the put to the rename of the destination (seen with inotify);
//! - 20 resources over the same 10,000 keys: the time until all 20 files are written, range
//!   requests per change (etcd's `etcd_mvcc_range_total`), and reconfd's peak RSS;
//! - an idle watching daemon: RSS and CPU time over 10 s;
//! - `--onetime` of the HAProxy template over 10,000 keys: wall time and peak RSS.

#[path = "../tests/common/mod.rs"]
mod common;
mod measure;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{Daemon, Fixture, wait_for};
use notify::{EventKind, RecursiveMode, Watcher};

/// Changes measured per latency scenario.
const SMALL_CHANGES: usize = 300;
const LARGE_CHANGES: usize = 100;
const FANOUT_CHANGES: usize = 40;
const FANOUT_RESOURCES: usize = 20;

const TEMPLATE: &str =
    "{% for kv in gets(key=\"/*\") %}server {{ kv.key | base }} {{ kv.value }} check\n{% endfor %}";

fn main() {
    measure::serve_if_asked();
    let etcd = Etcd::start();
    load(&etcd, "/bench/small", 100);
    load(&etcd, "/proxy/frontend", 10_000);
    etcd.put("/proxy/port", "8080");

    let put_alone = put_latency(&etcd);
    report("etcd put alone (reference)", &put_alone);

    let small = change_to_file(&etcd, "/bench/small", 1, SMALL_CHANGES);
    report("change → file, 100-key template", &small.latencies);

    let large = change_to_file(&etcd, "/proxy/frontend", 1, LARGE_CHANGES);
    report("change → file, 10,000-key template", &large.latencies);

    let fanout = change_to_file(&etcd, "/proxy/frontend", FANOUT_RESOURCES, FANOUT_CHANGES);
    report(
        "change → all 20 files, 20 resources over 10,000 keys",
        &fanout.latencies,
    );
    println!(
        "  range requests per change: {:.2}; reconfd peak RSS {:.1} MiB",
        fanout.ranges_per_change, fanout.peak_rss_mib
    );

    idle(&etcd);
    onetime(&etcd);
}

/// Puts `count` keys `<prefix>/webNNNNN` in one transaction.
fn load(etcd: &Etcd, prefix: &str, count: usize) {
    let pairs: Vec<(String, String)> = (0..count)
        .map(|i| {
            (
                format!("{prefix}/web{i:05}"),
                format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256),
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    etcd.put_all(&pairs);
}

fn put_latency(etcd: &Etcd) -> Vec<Duration> {
    (0..SMALL_CHANGES)
        .map(|i| {
            let started = Instant::now();
            etcd.put("/bench/reference", &i.to_string());
            started.elapsed()
        })
        .collect()
}

struct ChangeRun {
    latencies: Vec<Duration>,
    ranges_per_change: f64,
    peak_rss_mib: f64,
}

/// Starts `reconfd --watch` with `resources` resources rendering every key under `prefix`,
/// then changes one key `changes` times and measures until every destination was replaced.
fn change_to_file(etcd: &Etcd, prefix: &str, resources: usize, changes: usize) -> ChangeRun {
    let fixture = Fixture::new();
    fixture.template("servers.tmpl", TEMPLATE);
    std::fs::create_dir_all(fixture.path("out")).expect("out dir");
    for index in 0..resources {
        fixture.resource(
            &format!("r{index:02}"),
            &format!(
                "src = \"servers.tmpl\"\ndest = \"out/r{index:02}.conf\"\nprefix = \"{prefix}\"\n\
                 keys = [\"/\"]\n"
            ),
        );
    }
    let destinations: BTreeSet<PathBuf> = (0..resources)
        .map(|index| fixture.path(&format!("out/r{index:02}.conf")))
        .collect();
    let (events, renames) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && matches!(event.kind, EventKind::Modify(_) | EventKind::Create(_))
        {
            let _ = events.send(event.paths);
        }
    })
    .expect("inotify");
    watcher
        .watch(&fixture.path("out"), RecursiveMode::NonRecursive)
        .expect("watch out/");

    let node = etcd.endpoint(0);
    let daemon = fixture.spawn(&[
        "--watch",
        "--log-level",
        "warn",
        "--backend",
        "etcd",
        "--node",
        &node,
    ]);
    let all_written = || destinations.iter().all(|path| path.exists());
    assert!(
        wait_for(Duration::from_secs(60), all_written),
        "initial render\n{}",
        daemon.log()
    );
    std::thread::sleep(Duration::from_millis(500));

    let ranges_before = range_requests(etcd);
    let key = format!("{prefix}/web00050");
    let mut latencies = Vec::with_capacity(changes);
    for change in 0..changes {
        while renames.try_recv().is_ok() {}
        let value = format!("10.99.{}.{}:8080", change / 256, change % 256);
        let started = Instant::now();
        etcd.put(&key, &value);
        let mut pending = destinations.clone();
        while !pending.is_empty() {
            let paths = renames
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no file written\n{}", daemon.log()));
            for path in paths {
                pending.remove(&path);
            }
        }
        latencies.push(started.elapsed());
        let written = std::fs::read_to_string(destinations.first().expect("a destination"))
            .expect("destination");
        assert!(written.contains(&value), "the new value was rendered");
        // Let the daemon go idle, so each change is measured on its own.
        std::thread::sleep(Duration::from_millis(20));
    }
    let ranges = range_requests(etcd) - ranges_before;
    let peak_rss_mib = status_kib(&daemon, "VmHWM:") / 1024.0;
    assert_eq!(daemon.terminate(), Some(0));
    ChangeRun {
        latencies,
        ranges_per_change: ranges / changes as f64,
        peak_rss_mib,
    }
}

/// An idle watching daemon: RSS and CPU time spent over 10 s with no change.
fn idle(etcd: &Etcd) {
    let fixture = Fixture::new();
    fixture.template("servers.tmpl", TEMPLATE);
    fixture.resource(
        "small",
        "src = \"servers.tmpl\"\ndest = \"small.conf\"\nprefix = \"/bench/small\"\nkeys = [\"/\"]\n",
    );
    let node = etcd.endpoint(0);
    let daemon = fixture.spawn(&["--watch", "--backend", "etcd", "--node", &node]);
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
}

/// `--onetime` of the repository's HAProxy template over the 10,000 `/proxy/frontend` keys,
/// out of sync every time.
fn onetime(etcd: &Etcd) {
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
    let node = etcd.endpoint(0);
    let mut walls = Vec::new();
    let mut peak_rss_kib = 0;
    for _ in 0..30 {
        let _ = std::fs::remove_file(fixture.path("haproxy.cfg"));
        let (wall, rss) = measure::run(&fixture.command(&[
            "--onetime",
            "--log-level",
            "warn",
            "--backend",
            "etcd",
            "--node",
            &node,
        ]));
        walls.push(wall);
        peak_rss_kib = peak_rss_kib.max(rss);
    }
    let servers = fixture
        .read("haproxy.cfg")
        .lines()
        .filter(|line| line.trim_start().starts_with("server "))
        .count();
    assert_eq!(servers, 10_000);
    report("--onetime, 10,000-key HAProxy template from etcd", &walls);
    println!("  peak RSS {:.1} MiB", peak_rss_kib as f64 / 1024.0);
}

/// etcd's count of range requests served so far.
fn range_requests(etcd: &Etcd) -> f64 {
    etcd.metrics(0)
        .lines()
        .filter(|line| line.starts_with("etcd_mvcc_range_total"))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// A `/proc/<pid>/status` field in KiB, such as `VmRSS:`.
fn status_kib(daemon: &Daemon, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id()))
        .expect("status")
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        .expect("field")
}

/// User plus system CPU time of the daemon, in clock ticks (10 ms).
fn cpu_ticks(daemon: &Daemon) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", daemon.child.id())).expect("stat");
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

fn report(what: &str, samples: &[Duration]) {
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
