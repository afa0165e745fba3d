//! A soak run: `reconfd --watch` on a real etcd through 10,000 changes over 500 keys, feeding
//! 20 resources, paced at 250 changes per second.
//!
//! Run with `cargo bench --bench soak`; BENCHMARKS.md records the figures. It reports the
//! daemon's memory at the start, every 1,000 changes and at the end, its CPU time, and the
//! reloads each resource ran, and checks that every final file holds the final data, that no
//! reload ran twice for the same file (a reload for a state already reloaded), and that each
//! resource's last reload saw its final file. It exits non-zero when a check fails.

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{Fixture, wait_for};
use harness::{cpu_ticks, status_kib};

const KEYS: usize = 500;
const RESOURCES: usize = 20;
const CHANGES: usize = 10_000;
const PER_SECOND: u64 = 250;

fn main() {
    harness::measure::serve_if_asked();
    let etcd = Etcd::start();
    let mut values: Vec<String> = (0..KEYS).map(|_| "v0".to_string()).collect();
    let pairs: Vec<(String, String)> = (0..KEYS).map(|k| (key(k), values[k].clone())).collect();
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    etcd.put_all(&pairs);

    let fixture = Fixture::new();
    for r in 0..RESOURCES {
        fixture.template(
            &format!("r{r:02}.tmpl"),
            &format!(
                "# resource {r}\n{{% for kv in gets(key=\"/soak/*\") %}}{{{{ kv.key | base }}}} \
                 {{{{ kv.value }}}}\n{{% endfor %}}"
            ),
        );
        fixture.resource(
            &format!("r{r:02}"),
            &format!(
                "src = \"r{r:02}.tmpl\"\ndest = \"r{r:02}.conf\"\nkeys = [\"/soak\"]\n\
                 reload_cmd = \"md5sum r{r:02}.conf | cut -d' ' -f1 >> reloads-{r:02}\"\n"
            ),
        );
    }
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&["--watch", "--backend", "etcd", "--node", &nodes[0]]);
    let expected = |r: usize, values: &[String]| -> String {
        let mut text = format!("# resource {r}\n");
        for (k, value) in values.iter().enumerate() {
            text.push_str(&format!("k{k:03} {value}\n"));
        }
        text
    };
    let all_match = |values: &[String]| {
        (0..RESOURCES).all(|r| {
            std::fs::read_to_string(fixture.path(&format!("r{r:02}.conf")))
                .is_ok_and(|text| text == expected(r, values))
        })
    };
    assert!(
        wait_for(Duration::from_secs(30), || all_match(&values)),
        "first sync\n{}",
        daemon.log()
    );
    let start_rss = status_kib(&daemon, "VmRSS:");
    let start_ticks = cpu_ticks(&daemon);
    println!(
        "soak: {CHANGES} changes over {KEYS} keys, {RESOURCES} resources, paced at \
         {PER_SECOND}/s"
    );
    println!("  RSS after the first sync: {:.1} MiB", start_rss / 1024.0);

    let started = Instant::now();
    let mut samples = Vec::new();
    for change in 1..=CHANGES {
        let k = change % KEYS;
        values[k] = format!("v{change}");
        etcd.put(&key(k), &values[k]);
        if change % 1000 == 0 {
            samples.push(status_kib(&daemon, "VmRSS:") / 1024.0);
        }
        let due = started + Duration::from_micros(change as u64 * 1_000_000 / PER_SECOND);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let sent = started.elapsed();
    let settled = wait_for(Duration::from_secs(60), || all_match(&values));
    let settle_time = started.elapsed() - sent;
    let end_rss = status_kib(&daemon, "VmRSS:");
    let peak_rss = status_kib(&daemon, "VmHWM:");
    let ticks = cpu_ticks(&daemon) - start_ticks;
    println!(
        "  sent in {:.1} s ({:.0} changes/s); files settled {:.0} ms after the last change",
        sent.as_secs_f64(),
        CHANGES as f64 / sent.as_secs_f64(),
        settle_time.as_secs_f64() * 1000.0
    );
    let series: Vec<String> = samples.iter().map(|mib| format!("{mib:.1}")).collect();
    println!("  RSS every 1,000 changes (MiB): {}", series.join(", "));
    println!(
        "  RSS at the end {:.1} MiB (start {:.1} MiB), peak {:.1} MiB",
        end_rss / 1024.0,
        start_rss / 1024.0,
        peak_rss / 1024.0
    );
    println!(
        "  daemon CPU during the run: {:.2} s ({:.0}% of one core)",
        ticks as f64 / 100.0,
        ticks as f64 / sent.as_secs_f64()
    );

    let mut failures = Vec::new();
    if !settled {
        failures.push("the final files do not all hold the final data".to_string());
    }
    let mut reload_counts = Vec::new();
    // Give the last reloads a moment to write their lines.
    std::thread::sleep(Duration::from_millis(500));
    for r in 0..RESOURCES {
        let log =
            std::fs::read_to_string(fixture.path(&format!("reloads-{r:02}"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        reload_counts.push(lines.len());
        if lines.windows(2).any(|pair| pair[0] == pair[1]) {
            failures.push(format!("r{r:02}: a reload ran twice for the same file"));
        }
        let final_md5 = reconfd::reconcile::md5_hex(expected(r, &values).as_bytes());
        if lines.last() != Some(&final_md5.as_str()) {
            failures.push(format!(
                "r{r:02}: the last reload did not see the final file"
            ));
        }
    }
    reload_counts.sort();
    println!(
        "  reloads per resource (first sync included): min {}, median {}, max {} for {CHANGES} \
         changes",
        reload_counts[0],
        reload_counts[RESOURCES / 2],
        reload_counts[RESOURCES - 1]
    );
    // How many rounds a run makes depends on how its renders line up with the paced changes
    // (a faster round coalesces fewer changes), so two builds' CPU compares per round.
    println!(
        "  daemon CPU per reload round: {:.2} ms",
        ticks as f64 * 10.0 / reload_counts[RESOURCES / 2].max(1) as f64
    );
    for check in [
        "every final file holds the final data",
        "no reload for a file already reloaded",
        "every last reload saw the final file",
    ] {
        let failed = failures.iter().any(|failure| match check {
            "every final file holds the final data" => failure.contains("final data"),
            "no reload for a file already reloaded" => failure.contains("twice"),
            _ => failure.contains("last reload"),
        });
        println!("  {}: {check}", if failed { "FAIL" } else { "PASS" });
    }
    drop(daemon);
    if !failures.is_empty() {
        for failure in &failures {
            eprintln!("{failure}");
        }
        std::process::exit(1);
    }
}

/// The etcd key of key number `k`.
fn key(k: usize) -> String {
    format!("/soak/k{k:03}")
}
