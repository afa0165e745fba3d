//! reconfd against the in-repo Consul stand-in of `tests/common/consul.rs` (Consul cannot be
//! installed on this machine): what the figures show is reconfd's own cost of reading and
//! following Consul's HTTP API, not a real agent's speed.
//!
//! Run with `cargo bench --bench consul`; BENCHMARKS.md records the figures.

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

use common::consul::Consul;
use harness::{change_to_file, keys, onetime, put_latency, report};

fn main() {
    harness::measure::serve_if_asked();
    let consul = Consul::start(None);
    for (prefix, count) in [("/bench/small", 100), ("/proxy/frontend", 10_000)] {
        for (key, value) in keys(prefix, count) {
            consul.put(key.trim_start_matches('/'), &value);
        }
    }
    consul.put("proxy/port", "8080");
    let url = consul.url();
    let args = ["--backend", "consul", "--node", url.as_str()];
    let put = |key: &str, value: &str| consul.put(key.trim_start_matches('/'), value);

    report("stand-in put alone (reference)", &put_latency(&put, 300));
    let small = change_to_file(&args, &put, None, "/bench/small", 1, 300);
    report("change → file, 100-key template", &small.latencies);
    onetime(&args, "the Consul stand-in");
}
