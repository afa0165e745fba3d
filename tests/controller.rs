//! The controller as a user meets it, through the real binary: a runaway template or a hung
//! destination holds back nothing else, an output limit, a failed write tried again without new data, and two
//! stores of one kind shown as two instances.

mod common;

use std::time::Duration;

use common::etcd::Etcd;
use common::{Daemon, Fixture, expect_file, get, wait_for};

/// Nested loops of 10^10 turns: a render that would run for hours.
const RUNAWAY: &str =
    "{% for i in range(end=100000) %}{% for j in range(end=100000) %}{% endfor %}{% endfor %}";

fn listen_address() -> String {
    format!("127.0.0.1:{}", common::etcd::free_port())
}

/// The daemon watching the fixture's `data.yaml`, serving `--listen` on `address`.
fn watch_data(fixture: &Fixture, address: &str) -> Daemon {
    fixture.spawn(&[
        "--watch",
        "--backend",
        "file",
        "--file",
        "data.yaml",
        "--listen",
        address,
    ])
}

/// Waits until the daemon's log has a line containing `text`.
fn expect_log(daemon: &Daemon, text: &str) {
    assert!(
        wait_for(Duration::from_secs(30), || daemon.log().contains(text)),
        "a log line with {text:?}\n--- log\n{}",
        daemon.log()
    );
}

#[test]
fn a_runaway_template_fails_at_its_limit_and_holds_back_nothing_else() {
    let fixture = Fixture::new();
    fixture.template("runaway.tmpl", RUNAWAY);
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    fixture.resource(
        "a-runaway",
        "src = \"runaway.tmpl\"\ndest = \"runaway.conf\"\nkeys = [\"/app\"]\n\
         render_timeout = \"2s\"\n",
    );
    fixture.resource(
        "b-app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n",
    );
    fixture.write("runaway.conf", "kept\n");
    fixture.write("data.yaml", "app:\n  port: \"80\"\n");
    let address = listen_address();
    let daemon = watch_data(&fixture, &address);
    // The other resource of the same store is synced while the runaway render runs.
    expect_file(
        &fixture,
        &daemon,
        "app.conf",
        "port 80\n",
        "the other resource",
    );
    assert_eq!(
        get(&format!("http://{address}/health")),
        (200, "ok\n".to_string())
    );
    expect_log(&daemon, "rendering took longer than 2s");
    let log = daemon.log();
    assert!(log.contains("a-runaway.toml"), "{log}");
    assert!(log.contains("render_timeout"), "{log}");
    assert_eq!(fixture.read("runaway.conf"), "kept\n");
    // Changes keep flowing to the other resource.
    fixture.write("data.yaml", "app:\n  port: \"81\"\n");
    expect_file(&fixture, &daemon, "app.conf", "port 81\n", "a later change");
    let (code, status) = get(&format!("http://{address}/status"));
    assert_eq!(code, 200);
    assert!(status.contains("render_failed"), "{status}");
    assert_eq!(daemon.terminate(), Some(0));
}

/// A resource rendered in the same round as a runaway template, after it, is written while
/// the runaway still runs: its limit here is an hour, longer than the test waits.
#[test]
fn a_resource_queued_behind_a_runaway_render_is_written_without_waiting_for_it() {
    let fixture = Fixture::new();
    fixture.template("runaway.tmpl", RUNAWAY);
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    // Named to come first, so its render is queued before the other's.
    fixture.resource(
        "a-runaway",
        "src = \"runaway.tmpl\"\ndest = \"runaway.conf\"\nkeys = [\"/app\"]\n\
         render_timeout = \"1h\"\n",
    );
    fixture.resource(
        "b-app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n",
    );
    fixture.write("data.yaml", "app:\n  port: \"80\"\n");
    let address = listen_address();
    let daemon = watch_data(&fixture, &address);
    expect_file(
        &fixture,
        &daemon,
        "app.conf",
        "port 80\n",
        "the resource queued behind the runaway render",
    );
    fixture.write("data.yaml", "app:\n  port: \"81\"\n");
    expect_file(&fixture, &daemon, "app.conf", "port 81\n", "a later change");
    assert!(!fixture.path("runaway.conf").exists());
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn sigterm_ends_the_daemon_while_a_render_runs_away() {
    let fixture = Fixture::new();
    fixture.template("runaway.tmpl", RUNAWAY);
    fixture.resource(
        "runaway",
        "src = \"runaway.tmpl\"\ndest = \"runaway.conf\"\nkeys = [\"/app\"]\n",
    );
    fixture.write("data.yaml", "app:\n  port: \"80\"\n");
    let address = listen_address();
    let daemon = watch_data(&fixture, &address);
    // Health answers while the render (10 s limit) is running.
    assert!(
        wait_for(Duration::from_secs(30), || common::etcd::http_client()
            .get(format!("http://{address}/health"))
            .send()
            .is_ok_and(|response| response.status() == 200)),
        "/health answers\n{}",
        daemon.log()
    );
    assert!(!daemon.log().contains("took longer"), "{}", daemon.log());
    // terminate() fails unless the process exits well before the render's limit.
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_destination_on_a_hung_filesystem_holds_back_neither_health_nor_sigterm_nor_another_store() {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    fixture.resource(
        "hung",
        "src = \"app.tmpl\"\ndest = \"hung.conf\"\nkeys = [\"/app\"]\n",
    );
    fixture.resource(
        "local",
        "src = \"app.tmpl\"\ndest = \"local.conf\"\nkeys = [\"/app\"]\n\
         [backend]\nbackend = \"file\"\nfile = [\"local.yaml\"]\n",
    );
    // Reading a FIFO nobody writes blocks, as a read from a hung NFS mount does.
    let fifo = std::process::Command::new("mkfifo")
        .arg(fixture.path("hung.conf"))
        .status()
        .expect("mkfifo");
    assert!(fifo.success());
    fixture.write("data.yaml", "app:\n  port: \"80\"\n");
    fixture.write("local.yaml", "app:\n  port: \"90\"\n");
    let address = listen_address();
    let daemon = watch_data(&fixture, &address);
    expect_file(
        &fixture,
        &daemon,
        "local.conf",
        "port 90\n",
        "the resource of another store",
    );
    assert_eq!(
        get(&format!("http://{address}/health")),
        (200, "ok\n".to_string())
    );
    fixture.write("local.yaml", "app:\n  port: \"91\"\n");
    expect_file(
        &fixture,
        &daemon,
        "local.conf",
        "port 91\n",
        "a later change",
    );
    // terminate() fails unless the process exits promptly.
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn output_past_the_size_limit_fails_its_resource_only() {
    let fixture = Fixture::new();
    fixture.template(
        "big.tmpl",
        "{% for i in range(end=100000) %}0123456789{% endfor %}",
    );
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    fixture.resource(
        "big",
        "src = \"big.tmpl\"\ndest = \"big.conf\"\nkeys = [\"/app\"]\n\
         render_max_size = \"64KiB\"\n",
    );
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n",
    );
    fixture.write("big.conf", "kept\n");
    fixture.write("data.yaml", "app:\n  port: \"80\"\n");
    let run = fixture.run(&["--onetime", "--backend", "file", "--file", "data.yaml"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("big.toml") && run.stderr.contains("past 64.0 KiB"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("render_max_size`); the destination is left as it is"),
        "{run:?}"
    );
    assert_eq!(fixture.read("big.conf"), "kept\n");
    assert_eq!(fixture.read("app.conf"), "port 80\n");

    // The global flag applies to resources that set no limit of their own.
    let run = fixture.run(&[
        "--onetime",
        "--backend",
        "file",
        "--file",
        "data.yaml",
        "--render-max-size",
        "4",
    ]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("app.toml"), "{run:?}");
}

#[test]
fn limits_that_cannot_work_are_refused_with_their_key() {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "x\n");
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\nrender_timeout = \"2h\"\n",
    );
    fixture.write("data.yaml", "app: {}\n");
    let run = fixture.run(&["--onetime", "--backend", "file", "--file", "data.yaml"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("app.toml:5:") && run.stderr.contains("at most 1h"),
        "{run:?}"
    );
    let run = fixture.run(&[
        "--onetime",
        "--backend",
        "file",
        "--file",
        "data.yaml",
        "--render-max-size",
        "lots",
    ]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("--render-max-size"), "{run:?}");
}

#[test]
fn a_failed_write_is_tried_again_without_a_new_change() {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"out/app.conf\"\nkeys = [\"/app\"]\n",
    );
    // The destination's directory is, for now, a plain file: nothing can be written there,
    // whoever runs the test.
    fixture.write("out", "not a directory\n");
    fixture.write("data.yaml", "app:\n  port: \"80\"\n");
    let address = listen_address();
    let daemon = watch_data(&fixture, &address);
    expect_log(&daemon, "trying again in");
    let (_, status) = get(&format!("http://{address}/status"));
    assert!(status.contains("\"next_attempt\":\""), "{status}");
    std::fs::remove_file(fixture.path("out")).expect("rm");
    std::fs::create_dir(fixture.path("out")).expect("mkdir");
    // No data changes: the retry alone brings the file.
    expect_file(
        &fixture,
        &daemon,
        "out/app.conf",
        "port 80\n",
        "the retry after the directory came back",
    );
    assert!(
        wait_for(Duration::from_secs(10), || get(&format!(
            "http://{address}/status"
        ))
        .1
        .contains("\"next_attempt\":null")),
        "no retry is scheduled after the success"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// The number of lines of the fixture's file `name` (0 when it does not exist).
fn lines(fixture: &Fixture, name: &str) -> usize {
    std::fs::read_to_string(fixture.path(name)).map_or(0, |text| text.lines().count())
}

#[test]
fn a_failed_reload_is_run_again_without_a_new_change() {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    // Each run is counted; it fails until the file `reload-works` exists.
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n\
         reload_cmd = \"echo run >> reloads; test -e reload-works\"\n",
    );
    fixture.write("data.yaml", "app:\n  port: \"80\"\n");
    let address = listen_address();
    let daemon = watch_data(&fixture, &address);
    expect_log(&daemon, "updated, but the reload command failed");
    expect_log(&daemon, "trying again in");
    // /status describes the file on disk, swapped in though not yet loaded.
    let status = |field: &str| -> serde_json::Value {
        let (_, body) = get(&format!("http://{address}/status"));
        let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        status["resources"][0][field].clone()
    };
    assert_eq!(
        status("md5"),
        reconfd::reconcile::md5_hex(b"port 80\n").as_str()
    );
    let changed = status("last_change");
    assert!(changed.is_string(), "{changed}");
    // The file is in place, so the retry finds it in sync; the reload it owes runs all the
    // same, and fails again while the service cannot take it.
    assert!(
        wait_for(Duration::from_secs(30), || lines(&fixture, "reloads") >= 2),
        "the reload run again without a change\n--- log\n{}",
        daemon.log()
    );
    fixture.write("reload-works", "");
    expect_log(&daemon, "Reloaded for");
    assert!(
        wait_for(Duration::from_secs(10), || get(&format!(
            "http://{address}/status"
        ))
        .1
        .contains("\"next_attempt\":null")),
        "no retry is scheduled after the reload succeeded"
    );
    assert_eq!(
        status("last_change"),
        changed,
        "the file changed when it was swapped in, not when it was reloaded"
    );
    // One file was written, once: the reloads run again replaced nothing (and in exec mode
    // signal the service no more than once, by the same test of what a sync swapped).
    let (_, metrics) = get(&format!("http://{address}/metrics"));
    let writes: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("reconfd_writes_total{"))
        .collect();
    assert!(
        writes.len() == 1 && writes[0].ends_with(" 1"),
        "{writes:?}\n{metrics}"
    );
    let runs = lines(&fixture, "reloads");
    // In sync and reloaded: a resync reloads nothing more.
    daemon.hang_up();
    expect_log(&daemon, "SIGHUP: new settings applied");
    assert_eq!(daemon.terminate(), Some(0));
    assert_eq!(
        lines(&fixture, "reloads"),
        runs,
        "no reload after the one that succeeded"
    );
}

#[test]
fn a_reload_owed_is_run_again_while_newer_content_fails_its_check() {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    // The reload fails until the file `reload-works` exists; the check refuses `bad`.
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n\
         check_cmd = \"! grep -q bad {{.src}}\"\n\
         reload_cmd = \"echo run >> reloads; test -e reload-works\"\n",
    );
    fixture.write("data.yaml", "app:\n  port: \"80\"\n");
    let address = listen_address();
    let daemon = watch_data(&fixture, &address);
    expect_log(&daemon, "updated, but the reload command failed");
    // New data the check refuses: `port 80`, swapped in but never loaded, stays in place
    // and its reload is still owed.
    fixture.write("data.yaml", "app:\n  port: \"bad\"\n");
    expect_log(&daemon, "check failed, destination left unchanged");
    let runs = lines(&fixture, "reloads");
    assert!(
        wait_for(Duration::from_secs(30), || lines(&fixture, "reloads")
            > runs),
        "the owed reload run again while the check fails\n--- log\n{}",
        daemon.log()
    );
    fixture.write("reload-works", "");
    expect_log(
        &daemon,
        "the file in place, swapped in earlier, has now been reloaded",
    );
    assert_eq!(fixture.read("app.conf"), "port 80\n");
    assert!(
        wait_for(Duration::from_secs(10), || get(&format!(
            "http://{address}/status"
        ))
        .1
        .contains("\"next_attempt\":null")),
        "no retry once the owed reload succeeded: the check waits for new data"
    );
    let runs = lines(&fixture, "reloads");
    daemon.hang_up();
    expect_log(&daemon, "SIGHUP: new settings applied");
    assert_eq!(daemon.terminate(), Some(0));
    assert_eq!(lines(&fixture, "reloads"), runs, "nothing owed any more");
}

#[test]
fn resources_sharing_a_failed_reload_retry_it_together() {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    for name in ["a", "b"] {
        fixture.resource(
            name,
            &format!(
                "src = \"app.tmpl\"\ndest = \"{name}.conf\"\nkeys = [\"/app\"]\n\
                 reload_cmd = \"echo run >> reloads; test -e reload-works\"\n"
            ),
        );
    }
    fixture.write("data.yaml", "app:\n  port: \"80\"\n");
    let address = listen_address();
    let daemon = watch_data(&fixture, &address);
    expect_log(&daemon, "updated, but the reload command failed");
    assert!(
        wait_for(Duration::from_secs(30), || lines(&fixture, "reloads") >= 2),
        "retried\n--- log\n{}",
        daemon.log()
    );
    fixture.write("reload-works", "");
    expect_log(&daemon, "Reloaded for");
    assert!(
        wait_for(Duration::from_secs(30), || get(&format!(
            "http://{address}/status"
        ))
        .1
        .matches("\"next_attempt\":null")
        .count()
            == 2),
        "both settled\n--- log\n{}",
        daemon.log()
    );
    let log = daemon.log();
    let reloaded: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("Reloaded for"))
        .collect();
    // One reload of the service for both files, as when the command first ran.
    assert_eq!(reloaded.len(), 1, "{log}");
    assert!(
        reloaded[0].contains("a.conf") && reloaded[0].contains("b.conf"),
        "{log}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_reload_owed_is_run_by_the_settings_a_sighup_brings() {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\nreload_cmd = \"false\"\n",
    );
    fixture.write("data.yaml", "app:\n  port: \"80\"\n");
    let daemon = watch_data(&fixture, &listen_address());
    expect_log(&daemon, "updated, but the reload command failed");
    // The operator mends the reload command and sends SIGHUP: the file in place, never
    // reloaded, is reloaded by the new command though nothing in it changes.
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n\
         reload_cmd = \"echo run >> reloads\"\n",
    );
    daemon.hang_up();
    assert!(
        wait_for(Duration::from_secs(30), || lines(&fixture, "reloads") == 1),
        "the mended reload command run after the SIGHUP\n--- log\n{}",
        daemon.log()
    );
    assert_eq!(fixture.read("app.conf"), "port 80\n");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn onetime_does_not_promise_to_try_a_failed_reload_again() {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\nreload_cmd = \"false\"\n",
    );
    fixture.write("data.yaml", "app:\n  port: \"80\"\n");
    let run = fixture.run(&["--onetime", "--backend", "file", "--file", "data.yaml"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains("updated, but the reload command failed"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("trying again"), "{run:?}");
}

#[test]
fn two_etcd_clusters_are_two_store_instances() {
    let first = Etcd::start();
    let second = Etcd::start();
    first.put("/app/port", "80");
    second.put("/app/port", "81");
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    fixture.resource(
        "first",
        "src = \"app.tmpl\"\ndest = \"first.conf\"\nkeys = [\"/app\"]\n",
    );
    let second_node = &second.endpoints()[0];
    fixture.write(
        "conf.d/second.toml",
        &format!(
            "[template]\nsrc = \"app.tmpl\"\ndest = \"second.conf\"\nkeys = [\"/app\"]\n\n\
             [backend]\nbackend = \"etcd\"\nnodes = [\"{second_node}\"]\n"
        ),
    );
    let first_node = &first.endpoints()[0];
    let address = listen_address();
    let daemon = fixture.spawn(&[
        "--watch",
        "--backend",
        "etcd",
        "--node",
        first_node,
        "--listen",
        &address,
    ]);
    expect_file(
        &fixture,
        &daemon,
        "first.conf",
        "port 80\n",
        "first cluster",
    );
    expect_file(
        &fixture,
        &daemon,
        "second.conf",
        "port 81\n",
        "second cluster",
    );
    let (_, status) = get(&format!("http://{address}/status"));
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let mut instances: Vec<&str> = status["stores"]
        .as_array()
        .expect("stores")
        .iter()
        .map(|store| store["instance"].as_str().expect("instance"))
        .collect();
    instances.sort();
    let mut expected = vec![format!("etcd {first_node}"), format!("etcd {second_node}")];
    expected.sort();
    assert_eq!(instances, expected, "{status}");
    let (_, metrics) = get(&format!("http://{address}/metrics"));
    for node in [first_node, second_node] {
        let line = format!("reconfd_store_up{{store=\"etcd\",instance=\"etcd {node}\"}} 1");
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert_eq!(daemon.terminate(), Some(0));
}
