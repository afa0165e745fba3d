//! reconfd against the in-repo Vault stand-in of `tests/common/vault.rs` (Vault cannot be
//! installed on this machine): what the figures show is reconfd's own cost of listing and
//! reading secrets over Vault's HTTP API, not a real server's speed.
//!
//! Run with `cargo bench --bench vault`; BENCHMARKS.md records the figures.

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

use common::vault::Vault;
use harness::{keys, onetime};
use serde_json::json;

fn main() {
    harness::measure::serve_if_asked();
    let vault = Vault::start();
    vault.add_token("s.root", None);
    for (key, value) in keys("proxy/frontend", 10_000) {
        vault.put("secret", &key, json!({ "value": value }));
    }
    vault.put("secret", "proxy/port", json!({ "value": "8080" }));
    let url = vault.url();
    // Secrets live in the mount `secret`; the prefix puts the resource's `/proxy` there.
    let args = [
        "--backend",
        "vault",
        "--node",
        url.as_str(),
        "--auth-token",
        "s.root",
        "--prefix",
        "/secret",
    ];
    onetime(&args, "the Vault stand-in (one request per secret)");
}
