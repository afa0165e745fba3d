//! The empty-store guard: a resource that sees fewer keys than its `min_keys` (or
//! `--min-keys`) is not synced, its destination stays, and the reason is logged once per
//! change, shown in `/status` and in `reconfd_resource_guarded`; driven through the real
//! binary with the file store.

mod common;

use std::time::Duration;

use common::{Fixture, expect_content, get, wait_for};

/// A confdir rendering the servers under `/app/servers` into `app.conf`, with the resource
/// lines `extra`, and `data.yaml` holding `servers`.
fn fixture(extra: &str, servers: &[&str]) -> Fixture {
    let fixture = Fixture::new();
    fixture.template(
        "app.tmpl",
        "{% for kv in gets(key=\"/app/servers/*\") %}server {{ kv.key | base }} {{ kv.value }}\n{% endfor %}",
    );
    fixture.resource(
        "app",
        &format!("src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app/servers\"]\n{extra}"),
    );
    write_servers(&fixture, servers);
    fixture
}

/// Writes `data.yaml` with `servers` (`name=address`) under `/app/servers`, and a key the
/// resource does not see.
fn write_servers(fixture: &Fixture, servers: &[&str]) {
    let mut data = String::from("other:\n  key: value\napp:\n  servers:\n");
    if servers.is_empty() {
        data = String::from("other:\n  key: value\napp:\n  servers: {}\n");
    }
    for server in servers {
        let (name, address) = server.split_once('=').expect("name=address");
        data.push_str(&format!("    {name}: \"{address}\"\n"));
    }
    fixture.write("data.yaml", &data);
}

const ONETIME: &[&str] = &["--onetime", "--backend", "file", "--file", "data.yaml"];

#[test]
fn onetime_leaves_the_destination_and_fails_when_the_store_shows_too_few_keys() {
    let fixture = fixture("min_keys = 2\n", &["web1=10.0.0.1:80"]);
    fixture.write(
        "app.conf",
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
    );
    let run = fixture.run(ONETIME);
    assert_eq!(
        run.code,
        Some(1),
        "a held-back resource fails the run: {run:?}"
    );
    assert_eq!(
        fixture.read("app.conf"),
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "the destination stays"
    );
    assert!(
        run.stderr.contains("WARN")
            && run
                .stderr
                .contains("1 key under /app/servers, fewer than min_keys = 2"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("ERROR"), "{run:?}");

    write_servers(&fixture, &["web1=10.0.0.1:80", "web3=10.0.0.3:80"]);
    let run = fixture.run(ONETIME);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        fixture.read("app.conf"),
        "server web1 10.0.0.1:80\nserver web3 10.0.0.3:80\n"
    );
}

#[test]
fn the_global_min_keys_applies_to_resources_that_set_none_and_a_resource_s_own_wins() {
    let mut args = ONETIME.to_vec();
    args.extend(["--min-keys", "1"]);
    let global = fixture("", &[]);
    global.write("app.conf", "kept\n");
    let run = global.run(&args);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(global.read("app.conf"), "kept\n");
    assert!(
        run.stderr
            .contains("0 keys under /app/servers, fewer than min_keys = 1"),
        "{run:?}"
    );

    let own = fixture("min_keys = 0\n", &[]);
    own.write("app.conf", "kept\n");
    let run = own.run(&args);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(own.read("app.conf"), "");
}

#[test]
fn a_bad_min_keys_names_the_file_line_and_key() {
    let fixture = fixture("min_keys = -1\n", &[]);
    let run = fixture.run(ONETIME);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("app.toml:5:")
            && run
                .stderr
                .contains("`min_keys` = -1: a number of keys, at least 0"),
        "{run:?}"
    );
}

/// The `reconfd_resource_guarded` sample of `metrics` and the number of syncs held back.
fn guarded(metrics: &str) -> (Option<String>, usize) {
    let gauge = metrics
        .lines()
        .find(|line| line.starts_with("reconfd_resource_guarded{"))
        .and_then(|line| line.rsplit_once(' '))
        .map(|(_, value)| value.to_string());
    let held = metrics
        .lines()
        .find(|line| line.starts_with("reconfd_renders_total{") && line.contains("guarded"))
        .and_then(|line| line.rsplit_once(' '))
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    (gauge, held)
}

#[test]
fn a_watching_daemon_holds_the_file_logs_once_per_change_and_shows_it() {
    let fixture = fixture("min_keys = 2\n", &["web1=10.0.0.1:80", "web2=10.0.0.2:80"]);
    let address = format!("127.0.0.1:{}", common::etcd::free_port());
    let daemon = fixture.spawn(&[
        "--watch",
        "--backend",
        "file",
        "--file",
        "data.yaml",
        "--listen",
        &address,
    ]);
    let both = "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n";
    expect_content(&fixture, &daemon, both, "first sync");
    let metrics = || get(&format!("http://{address}/metrics")).1;
    assert_eq!(guarded(&metrics()), (Some("0".to_string()), 0));

    // The store empties: the file stays.
    write_servers(&fixture, &[]);
    assert!(
        wait_for(Duration::from_secs(30), || guarded(&metrics()).1 == 1),
        "{}",
        daemon.log()
    );
    assert_eq!(guarded(&metrics()).0.as_deref(), Some("1"));
    let (_, status) = get(&format!("http://{address}/status"));
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let resource = &status["resources"][0];
    assert_eq!(resource["last_result"], "guarded", "{status}");
    assert!(
        resource["last_error"].as_str().is_some_and(
            |error| error.contains("0 keys under /app/servers, fewer than min_keys = 2")
        ),
        "{status}"
    );

    // Another round still short of keys: logged no more.
    write_servers(&fixture, &["web9=10.0.0.9:80"]);
    assert!(
        wait_for(Duration::from_secs(30), || guarded(&metrics()).1 == 2),
        "{}",
        daemon.log()
    );
    assert_eq!(fixture.read("app.conf"), both);
    let log = daemon.log();
    assert_eq!(log.matches("fewer than min_keys").count(), 1, "{log}");
    assert_eq!(log.matches(" WARN ").count(), 1, "{log}");

    // Enough keys again: synced, and said once.
    write_servers(&fixture, &["web3=10.0.0.3:80", "web4=10.0.0.4:80"]);
    expect_content(
        &fixture,
        &daemon,
        "server web3 10.0.0.3:80\nserver web4 10.0.0.4:80\n",
        "synced once the keys are back",
    );
    assert!(
        wait_for(Duration::from_secs(30), || guarded(&metrics()).0.as_deref()
            == Some("0")),
        "{}",
        daemon.log()
    );
    let log = daemon.log();
    assert_eq!(
        log.matches("at least min_keys = 2 keys again").count(),
        1,
        "{log}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_sibling_key_sharing_the_prefix_string_does_not_count() {
    // `/app/servers-old/web9` starts with `/app/servers` but is not under it: an emptied
    // `/app/servers` is still guarded.
    let fixture = fixture("min_keys = 1\n", &[]);
    fixture.write(
        "data.yaml",
        "app:\n  servers: {}\n  servers-old:\n    web9: \"10.0.0.9:80\"\n",
    );
    fixture.write("app.conf", "server web1 10.0.0.1:80\n");
    let run = fixture.run(ONETIME);
    assert_eq!(run.code, Some(1), "the emptied prefix is guarded: {run:?}");
    assert_eq!(fixture.read("app.conf"), "server web1 10.0.0.1:80\n");
    assert!(
        run.stderr
            .contains("0 keys under /app/servers, fewer than min_keys = 1"),
        "{run:?}"
    );
}
