//! reconfd against a real nats-server with JetStream on loopback: how fast a change reaches the
//! destination file, and what a `--onetime` over 10,000 keys costs.
//!
//! Run with `cargo bench --bench nats`; BENCHMARKS.md records the figures. Scenarios:
//!
//! - change → file written, for a template over 100 keys: the time from sending the put to the
//!   rename of the destination (seen with inotify);
//! - `--onetime` of the HAProxy template over 10,000 keys: wall time and peak RSS.

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

use common::nats::Nats;
use harness::{standard_keys, standard_rows};

fn main() {
    harness::measure::serve_if_asked();
    let server = Nats::start();
    let pairs = standard_keys();
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    server.put_all(&pairs);
    let node = server.url();
    let args = ["--backend", "nats", "--node", node.as_str()];
    standard_rows(
        &args,
        &|key: &str, value: &str| {
            server.put(key, value);
        },
        "nats KV put",
        "nats",
    );
}
