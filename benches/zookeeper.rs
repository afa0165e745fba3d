//! reconfd against a real standalone ZooKeeper on loopback: how fast a change reaches the
//! destination file, and what a `--onetime` over 10,000 znodes costs.
//!
//! Run with `cargo bench --bench zookeeper`; BENCHMARKS.md records the figures. Scenarios:
//!
//! - change → file written, for a template over 100 znodes: the time from sending the setData
//!   to the rename of the destination (seen with inotify);
//! - `--onetime` of the HAProxy template over 10,000 znodes: wall time and peak RSS.

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

use common::zookeeper::Zookeeper;
use harness::{standard_keys, standard_rows};

fn main() {
    harness::measure::serve_if_asked();
    let server = Zookeeper::start();
    let pairs = standard_keys();
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    server.put_all(&pairs);
    let node = server.node();
    let args = ["--backend", "zookeeper", "--node", node.as_str()];
    standard_rows(
        &args,
        &|key: &str, value: &str| server.put(key, value),
        "zookeeper setData",
        "zookeeper",
    );
}
