//! A fleet on one store: 50 watching reconfd daemons on one etcd, one 100-key resource each;
//! one put, and the time until the last of the 50 destinations is replaced (its rename, seen
//! with inotify). Reports that time, etcd's CPU per change (from its
//! `process_cpu_seconds_total`), the daemons' CPU per change and their summed and largest RSS;
//! then the same fleet through one `etcd grpc-proxy`, which serves the 50 watches from one
//! watch on the cluster (the proxy's own CPU reported beside the cluster's).
//!
//! Run with `cargo bench --bench fleet`; BENCHMARKS.md records the figures.

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::etcd::{Etcd, GrpcProxy};
use common::{Daemon, Fixture, wait_for};
use harness::{Renames, TEMPLATE, cpu_ticks, keys, process_cpu_ticks, report, status_kib};

const DAEMONS: usize = 50;
const CHANGES: usize = 100;
const PREFIX: &str = "/fleet";

fn main() {
    harness::measure::serve_if_asked();
    let etcd = Etcd::start();
    let pairs = keys(PREFIX, 100);
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    etcd.put_all(&pairs);

    fleet(&etcd, &etcd.endpoint(0), None, "directly on etcd");
    let proxy = GrpcProxy::start(&etcd);
    fleet(
        &etcd,
        &proxy.endpoint(),
        Some(&proxy),
        "through one grpc-proxy",
    );
}

/// Starts the fleet pointed at `node`, measures `CHANGES` puts made on etcd itself, and stops
/// it.
fn fleet(etcd: &Etcd, node: &str, proxy: Option<&GrpcProxy>, how: &str) {
    let fixtures: Vec<Fixture> = (0..DAEMONS).map(|_| Fixture::new()).collect();
    for fixture in &fixtures {
        fixture.template("servers.tmpl", TEMPLATE);
        fixture.resource(
            "servers",
            &format!(
                "src = \"servers.tmpl\"\ndest = \"servers.conf\"\nprefix = \"{PREFIX}\"\n\
                 keys = [\"/\"]\n"
            ),
        );
    }
    let args = [
        "--watch",
        "--log-level",
        "warn",
        "--backend",
        "etcd",
        "--node",
        node,
    ];
    let daemons: Vec<Daemon> = fixtures
        .iter()
        .map(|fixture| fixture.spawn(&args))
        .collect();
    let holds = |value: &str| {
        fixtures.iter().all(|fixture| {
            std::fs::read_to_string(fixture.path("servers.conf"))
                .is_ok_and(|text| text.contains(value))
        })
    };
    assert!(
        wait_for(Duration::from_secs(120), || holds("server web00050 ")),
        "the fleet's first sync\n{}",
        daemons[0].log()
    );

    // The time of each file is the rename that replaced it, seen with inotify: polling the
    // 50 files would measure the polling interval, and cost the cores the daemons run on.
    let destinations: BTreeSet<PathBuf> = fixtures
        .iter()
        .map(|fixture| fixture.path("servers.conf"))
        .collect();
    let dirs: Vec<PathBuf> = fixtures.iter().map(|fixture| fixture.path("")).collect();
    let renames = Renames::in_dirs(dirs.iter().map(PathBuf::as_path));

    let key = format!("{PREFIX}/web00050");
    let cluster_before = cpu_seconds(etcd);
    let proxy_before = proxy.and_then(GrpcProxy::pid).map(process_cpu_ticks);
    let fleet_cpu = || daemons.iter().map(cpu_ticks).sum::<u64>();
    let fleet_before = fleet_cpu();
    let mut latencies = Vec::with_capacity(CHANGES);
    for change in 0..CHANGES {
        renames.forget_earlier();
        let value = format!("10.77.{}.{}:8080", change / 256, change % 256);
        let started = Instant::now();
        etcd.put(&key, &value);
        if let Err(missing) = renames.wait_for_all(&destinations, Duration::from_secs(30)) {
            panic!("change {change}: {missing} files not written");
        }
        latencies.push(started.elapsed());
        assert!(
            holds(&format!("server web00050 {value} ")),
            "change {change} is in every file"
        );
    }
    let cluster_cpu = cpu_seconds(etcd) - cluster_before;
    let fleet_ticks = fleet_cpu() - fleet_before;
    report(
        &format!("fleet of {DAEMONS} daemons {how}: put → all {DAEMONS} files"),
        &latencies,
    );
    println!(
        "  etcd CPU per change {:.2} ms",
        cluster_cpu * 1000.0 / CHANGES as f64
    );
    println!(
        "  daemons' CPU per change, summed {:.1} ms ({:.2} ms each)",
        fleet_ticks as f64 * 10.0 / CHANGES as f64,
        fleet_ticks as f64 * 10.0 / (CHANGES * DAEMONS) as f64
    );
    if let Some((proxy, before)) = proxy.zip(proxy_before) {
        let ticks = proxy.pid().map(process_cpu_ticks).unwrap_or(before) - before;
        println!(
            "  grpc-proxy CPU per change {:.2} ms",
            ticks as f64 * 10.0 / CHANGES as f64
        );
    }
    let rss: Vec<f64> = daemons
        .iter()
        .map(|daemon| status_kib(daemon, "VmRSS:") / 1024.0)
        .collect();
    println!(
        "  daemons' RSS: summed {:.0} MiB, largest {:.1} MiB",
        rss.iter().sum::<f64>(),
        rss.iter().cloned().fold(0.0, f64::max)
    );
    for daemon in daemons {
        assert_eq!(daemon.terminate(), Some(0));
    }
}

/// etcd's CPU time so far, in seconds, from its metrics.
fn cpu_seconds(etcd: &Etcd) -> f64 {
    etcd.metrics(0)
        .lines()
        .find(|line| line.starts_with("process_cpu_seconds_total"))
        .and_then(|line| line.split_whitespace().last()?.parse().ok())
        .expect("process_cpu_seconds_total")
}
