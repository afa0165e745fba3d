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
use harness::{standard_keys, standard_rows};

fn main() {
    harness::measure::serve_if_asked();
    let server = Redis::start();
    let pairs = standard_keys();
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    server.set_all(&pairs);
    let node = server.url();
    let args = ["--backend", "redis", "--node", node.as_str()];
    standard_rows(
        &args,
        &|key: &str, value: &str| server.set(key, value),
        "redis SET",
        "redis",
    );
}
