//! reconfd against a real Redis on loopback: how fast a change reaches the destination file,
//! and what a `--onetime` over 10,000 keys costs.
//!
//! Run with `cargo bench --bench redis`; BENCHMARKS.md records the figures. Scenarios:
//!
//! - change → file written, for a template over 100 keys: the time from sending the SET to the
//!   rename of the destination (seen with inotify);
//! - `--onetime` of the HAProxy template over 10,000 keys: wall time and peak RSS.

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

use common::redis::Redis;
use harness::{change_to_file, keys, onetime, put_latency, report};

/// Changes measured per latency scenario.
const SMALL_CHANGES: usize = 300;

fn main() {
    harness::measure::serve_if_asked();
    let redis = Redis::start();
    for (prefix, count) in [("/bench/small", 100), ("/proxy/frontend", 10_000)] {
        let pairs = keys(prefix, count);
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        redis.set_all(&pairs);
    }
    redis.set("/proxy/port", "8080");
    let node = redis.url();
    let args = ["--backend", "redis", "--node", node.as_str()];
    let put = |key: &str, value: &str| redis.set(key, value);

    report(
        "redis SET alone (reference)",
        &put_latency(&put, SMALL_CHANGES),
    );

    let small = change_to_file(&args, &put, None, "/bench/small", 1, SMALL_CHANGES);
    report("change → file, 100-key template", &small.latencies);
    println!("  reconfd peak RSS {:.1} MiB", small.peak_rss_mib);

    onetime(&args, "redis");
}
