//! `--onetime` of the HAProxy template over 10,000 `/proxy/frontend/*` keys from the file
//! store, out of sync (the destination is removed before each run, so every run renders,
//! stages, renames and flushes).
//!
//! Run with `cargo bench --bench onetime`. Prints wall time (p50, p90, max) and peak RSS over
//! the runs; BENCHMARKS.md records the figures.

#[path = "harness/measure.rs"]
mod measure;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

const KEYS: usize = 10_000;
const RUNS: usize = 30;

fn main() {
    measure::serve_if_asked();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    write_confdir(root);
    let binary = env!("CARGO_BIN_EXE_reconfd");

    let mut walls = Vec::with_capacity(RUNS);
    let mut peak_rss_kib = 0;
    for _ in 0..RUNS {
        let _ = std::fs::remove_file(root.join("haproxy.cfg"));
        let (wall, rss_kib) = run_measured(binary, root);
        walls.push(wall);
        peak_rss_kib = peak_rss_kib.max(rss_kib);
    }
    let rendered = std::fs::read_to_string(root.join("haproxy.cfg")).expect("rendered file");
    let servers = rendered
        .lines()
        .filter(|line| line.trim_start().starts_with("server "))
        .count();
    assert_eq!(servers, KEYS, "every key rendered");

    walls.sort();
    let percentile = |p: usize| walls[(walls.len() - 1) * p / 100];
    println!(
        "onetime, file store, {KEYS} keys, out of sync, {RUNS} runs: \
         wall p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms; peak RSS {:.1} MiB",
        ms(percentile(50)),
        ms(percentile(90)),
        ms(percentile(100)),
        peak_rss_kib as f64 / 1024.0
    );
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn write_confdir(root: &Path) {
    std::fs::create_dir_all(root.join("conf.d")).expect("conf.d");
    std::fs::create_dir_all(root.join("templates")).expect("templates");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        repo.join("templates/haproxy.cfg.tmpl"),
        root.join("templates/haproxy.cfg.tmpl"),
    )
    .expect("template");
    std::fs::write(
        root.join("conf.d/haproxy.toml"),
        "[template]\nsrc = \"haproxy.cfg.tmpl\"\ndest = \"haproxy.cfg\"\nkeys = [\"/proxy\"]\n",
    )
    .expect("resource");
    let mut data = String::from("proxy:\n  port: 8080\n  frontend:\n");
    for i in 0..KEYS {
        data.push_str(&format!(
            "    web{i:05}: 10.{}.{}.{}:8080\n",
            i / 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    std::fs::write(root.join("data.yaml"), data).expect("data");
}

/// Runs one `--onetime` and returns its wall time and peak resident set size in KiB.
fn run_measured(binary: &str, root: &Path) -> (Duration, u64) {
    let mut command = Command::new(binary);
    command
        .args(["--onetime", "--log-level", "warn", "--backend", "file"])
        .arg("--confdir")
        .arg(root)
        .arg("--file")
        .arg(root.join("data.yaml"));
    measure::run(&command)
}
