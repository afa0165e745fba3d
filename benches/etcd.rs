//! reconfd against a real etcd on loopback: how fast a change reaches the destination file,
//! how much reconfd asks of etcd per change, and what it costs in memory and CPU.
//!
//! Run with `cargo bench --bench etcd`; BENCHMARKS.md records the figures. Scenarios:
//!
//! - change → file written, for a template over 100 keys and over 10,000 keys: the time from
//!   sending the put to the rename of the destination (seen with inotify); the 100-key one also
//!   with the daemon's resources over two and over ten prefixes, which one watch covers, and
//!   with the destination on a tmpfs (`/dev/shm`), which leaves the disk's flushes out;
//! - 20 resources over the same 10,000 keys: the time until all 20 files are written, range
//!   requests per change (etcd's `etcd_mvcc_range_total`), and reconfd's peak RSS;
//! - an idle watching daemon: RSS and CPU time over 10 s;
//! - `--onetime` of the HAProxy template over 10,000 keys: wall time and peak RSS.
//!
//! Words after `--` pick scenarios by name: `put`, `small`, `tmpfs`, `prefixes`, `large`,
//! `fanout`, `idle`, `onetime` (`cargo bench --bench etcd -- fanout`).

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

use common::etcd::Etcd;
use harness::{
    change_to_file, change_to_file_among, idle, keys, onetime, put_latency, report, selected,
};

/// Changes measured per latency scenario.
const SMALL_CHANGES: usize = 300;
const LARGE_CHANGES: usize = 100;
const FANOUT_CHANGES: usize = 40;
const FANOUT_RESOURCES: usize = 20;

fn main() {
    harness::measure::serve_if_asked();
    let etcd = Etcd::start();
    let others: Vec<String> = (1..10).map(|i| format!("/bench/other{i}")).collect();
    let mut prefixes_and_counts = vec![("/bench/small", 100), ("/proxy/frontend", 10_000)];
    prefixes_and_counts.extend(others.iter().map(|prefix| (prefix.as_str(), 100)));
    for prefix_and_count in prefixes_and_counts {
        let (prefix, count) = prefix_and_count;
        let pairs = keys(prefix, count);
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        etcd.put_all(&pairs);
    }
    etcd.put("/proxy/port", "8080");
    let node = etcd.endpoint(0);
    let args = ["--backend", "etcd", "--node", node.as_str()];
    let put = |key: &str, value: &str| {
        etcd.put(key, value);
    };
    let ranges = || range_requests(&etcd);

    if selected("put") {
        report(
            "etcd put alone (reference)",
            &put_latency(&put, SMALL_CHANGES),
        );
    }

    if selected("small") {
        let small = change_to_file(&args, &put, Some(&ranges), "/bench/small", 1, SMALL_CHANGES);
        report("change → file, 100-key template", &small.latencies);
    }

    if selected("tmpfs") {
        // The same with the destination on a tmpfs, where fsync and rename cost next to
        // nothing: what is left is etcd's commit and reconfd's own work.
        let shm = tempfile::tempdir_in("/dev/shm").expect("a directory on /dev/shm");
        let in_memory = change_to_file_among(
            &args,
            &put,
            None,
            &["/bench/small"],
            1,
            SMALL_CHANGES,
            Some(shm.path()),
        );
        report(
            "change → file, 100-key template, destination on tmpfs",
            &in_memory.latencies,
        );
    }

    if selected("prefixes") {
        for count in [2, 10] {
            let mut prefixes = vec!["/bench/small"];
            prefixes.extend(others.iter().take(count - 1).map(String::as_str));
            let run =
                change_to_file_among(&args, &put, None, &prefixes, count, SMALL_CHANGES, None);
            report(
                &format!("change → file, 100-key template, resources over {count} prefixes"),
                &run.latencies,
            );
        }
    }

    if selected("large") {
        let large = change_to_file(
            &args,
            &put,
            Some(&ranges),
            "/proxy/frontend",
            1,
            LARGE_CHANGES,
        );
        report("change → file, 10,000-key template", &large.latencies);
    }

    if selected("fanout") {
        let fanout = change_to_file(
            &args,
            &put,
            Some(&ranges),
            "/proxy/frontend",
            FANOUT_RESOURCES,
            FANOUT_CHANGES,
        );
        report(
            "change → all 20 files, 20 resources over 10,000 keys",
            &fanout.latencies,
        );
        println!(
            "  range requests per change: {:.2}; reconfd peak RSS {:.1} MiB",
            fanout.ranges_per_change.unwrap_or(f64::NAN),
            fanout.peak_rss_mib
        );
    }

    if selected("idle") {
        idle(&args, "/bench/small");
    }
    if selected("onetime") {
        onetime(&args, "etcd");
    }
}

/// etcd's count of range requests served so far.
fn range_requests(etcd: &Etcd) -> f64 {
    etcd.metrics(0)
        .lines()
        .filter(|line| line.starts_with("etcd_mvcc_range_total"))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}
