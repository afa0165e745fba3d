//! The ZooKeeper store against a real standalone ZooKeeper started on a loopback port: a onetime
//! read of a small tree (only znodes without children are keys), watch mode following creates,
//! data changes, deletes and a burst of creates, ZooKeeper restarted under a watching reconfd,
//! a change made while reconfd is cut off from ZooKeeper, a ZooKeeper that is not up yet when reconfd
//! starts, and a znode reconfd may not read.

mod common;

use std::time::Duration;

use common::zookeeper::Zookeeper;
use common::{Fixture, expect_content, wait_for};

/// A confdir with one resource rendering every key under `/app` as `key=value` lines into
/// `app.conf`.
fn fixture() -> Fixture {
    let fixture = Fixture::new();
    fixture.template(
        "app.tmpl",
        "{% for kv in gets(key=\"/app/**\") %}{{ kv.key }}={{ kv.value }}\n{% endfor %}",
    );
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n",
    );
    fixture
}

fn args<'a>(node: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--backend", "zookeeper", "--node", node];
    args.extend_from_slice(extra);
    args
}

#[test]
fn onetime_renders_the_znodes_without_children() {
    let zookeeper = Zookeeper::start();
    zookeeper.put("/app", "the data of a directory is no key");
    zookeeper.put("/app/name", "demo");
    zookeeper.put("/app/servers", "neither is this");
    zookeeper.put("/app/servers/web1", "10.0.0.1:80");
    zookeeper.put("/app/servers/web2", "10.0.0.2:80");
    zookeeper.put("/app/empty", "");
    zookeeper.put("/other/key", "not under /app");
    let fixture = fixture();
    let node = zookeeper.node();
    let run = fixture.run(&args(&node, &["--onetime"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        fixture.read("app.conf"),
        "/app/empty=\n/app/name=demo\n/app/servers/web1=10.0.0.1:80\n/app/servers/web2=10.0.0.2:80\n"
    );

    // A prefix that does not exist reads as no keys, not as an error.
    fixture.resource(
        "missing",
        "src = \"app.tmpl\"\ndest = \"missing.conf\"\nkeys = [\"/missing/deeper\"]\n",
    );
    let run = fixture.run(&args(&node, &["--onetime"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("missing.conf"), "");
}

#[test]
fn onetime_names_the_servers_it_cannot_reach() {
    let zookeeper = Zookeeper::stopped();
    let fixture = fixture();
    let node = zookeeper.node();
    let run = fixture.run(&args(&node, &["--onetime"]));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains(&node), "names the server: {run:?}");
    assert!(
        run.stderr.to_lowercase().contains("connection refused"),
        "says why: {run:?}"
    );
    assert!(!fixture.path("app.conf").exists());

    // A port that takes connections but is no ZooKeeper's: said so.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let node = format!(
        "127.0.0.1:{}",
        listener.local_addr().expect("address").port()
    );
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let run = fixture.run(&args(&node, &["--onetime"]));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("did not answer as ZooKeeper does"),
        "says why: {run:?}"
    );
}

#[test]
fn watch_follows_creates_data_changes_and_deletes() {
    let zookeeper = Zookeeper::start();
    zookeeper.put("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let node = zookeeper.node();
    let daemon = fixture.spawn(&args(&node, &["--watch"]));
    expect_content(
        &fixture,
        &daemon,
        "/app/servers/web1=10.0.0.1:80\n",
        "initial render",
    );

    zookeeper.put("/app/servers/web2", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "/app/servers/web1=10.0.0.1:80\n/app/servers/web2=10.0.0.2:80\n",
        "create picked up",
    );
    zookeeper.put("/app/servers/web1", "10.0.0.11:80");
    expect_content(
        &fixture,
        &daemon,
        "/app/servers/web1=10.0.0.11:80\n/app/servers/web2=10.0.0.2:80\n",
        "data change picked up",
    );
    // A key that gains a child becomes a directory: the child is the key now.
    zookeeper.put("/app/servers/web2/weight", "10");
    expect_content(
        &fixture,
        &daemon,
        "/app/servers/web1=10.0.0.11:80\n/app/servers/web2/weight=10\n",
        "a node gaining a child is no key any more",
    );
    // Losing its last child, it is a key again, with the data it kept.
    zookeeper.delete("/app/servers/web2/weight");
    expect_content(
        &fixture,
        &daemon,
        "/app/servers/web1=10.0.0.11:80\n/app/servers/web2=10.0.0.2:80\n",
        "a node losing its last child is a key again",
    );
    zookeeper.delete("/app/servers/web1");
    expect_content(
        &fixture,
        &daemon,
        "/app/servers/web2=10.0.0.2:80\n",
        "delete picked up",
    );
    // A deleted subtree takes all its keys with it.
    zookeeper.put("/app/servers/web3/port", "8080");
    zookeeper.delete("/app/servers");
    expect_content(&fixture, &daemon, "", "subtree delete picked up");
    // A znode created where no znode was, with its parents.
    zookeeper.put("/app/new/deep/key", "v");
    expect_content(
        &fixture,
        &daemon,
        "/app/new/deep/key=v\n",
        "deep create picked up",
    );
    assert!(!daemon.log().contains("ERROR"), "{}", daemon.log());
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_burst_of_creates_is_rendered_in_full() {
    let zookeeper = Zookeeper::start();
    zookeeper.put("/app/servers/web0000", "10.0.0.0:80");
    let fixture = fixture();
    let node = zookeeper.node();
    let daemon = fixture.spawn(&args(&node, &["--watch"]));
    expect_content(
        &fixture,
        &daemon,
        "/app/servers/web0000=10.0.0.0:80\n",
        "initial render",
    );

    let keys: Vec<(String, String)> = (0..500)
        .map(|i| {
            (
                format!("/app/servers/web{i:04}"),
                format!("10.0.{}.{}:80", i / 256, i % 256),
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    zookeeper.put_all(&pairs);
    let expected: String = keys.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    expect_content(&fixture, &daemon, &expected, "every create rendered");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_change_after_a_zookeeper_restart_is_rendered() {
    let mut zookeeper = Zookeeper::start();
    zookeeper.put("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let node = zookeeper.node();
    let daemon = fixture.spawn(&args(&node, &["--watch"]));
    expect_content(
        &fixture,
        &daemon,
        "/app/servers/web1=10.0.0.1:80\n",
        "initial render",
    );

    zookeeper.restart();
    zookeeper.put("/app/servers/web2", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "/app/servers/web1=10.0.0.1:80\n/app/servers/web2=10.0.0.2:80\n",
        "change after the restart rendered",
    );
    zookeeper.put("/app/servers/web1", "10.0.0.11:80");
    expect_content(
        &fixture,
        &daemon,
        "/app/servers/web1=10.0.0.11:80\n/app/servers/web2=10.0.0.2:80\n",
        "the watch goes on",
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_change_made_while_reconfd_is_cut_off_from_zookeeper_is_rendered() {
    let zookeeper = Zookeeper::start();
    zookeeper.put("/app/servers/web1", "10.0.0.1:80");
    let proxy = common::proxy::Proxy::start(
        zookeeper
            .node()
            .parse()
            .expect("the node is an IP address and a port"),
    );
    let fixture = fixture();
    let node = proxy.address.to_string();
    let daemon = fixture.spawn(&args(&node, &["--watch"]));
    expect_content(
        &fixture,
        &daemon,
        "/app/servers/web1=10.0.0.1:80\n",
        "initial render",
    );

    // Cut off: the session's connection is closed and no new one gets through.
    proxy.refuse(true);
    proxy.cut();
    assert!(
        wait_for(Duration::from_secs(30), || {
            let log = daemon.log();
            log.contains("the connection was lost") || log.contains("store unavailable")
        }),
        "the cut noticed\n{}",
        daemon.log()
    );
    zookeeper.put("/app/servers/web2", "10.0.0.2:80");
    proxy.refuse(false);
    expect_content(
        &fixture,
        &daemon,
        "/app/servers/web1=10.0.0.1:80\n/app/servers/web2=10.0.0.2:80\n",
        "change made while cut off rendered",
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn reconfd_started_before_zookeeper_renders_once_it_serves() {
    let mut zookeeper = Zookeeper::stopped();
    let fixture = fixture();
    let node = zookeeper.node();
    let daemon = fixture.spawn(&args(&node, &["--watch"]));
    assert!(
        wait_for(Duration::from_secs(10), || daemon
            .log()
            .contains("zookeeper store unavailable")),
        "the outage is logged\n{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains(&node),
        "names the server\n{}",
        daemon.log()
    );
    assert!(!fixture.path("app.conf").exists());

    zookeeper.launch();
    zookeeper.put("/app/servers/web1", "10.0.0.1:80");
    expect_content(
        &fixture,
        &daemon,
        "/app/servers/web1=10.0.0.1:80\n",
        "rendered once ZooKeeper serves",
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_znode_reconfd_may_not_read_is_a_refusal_and_the_file_stays_until_it_may() {
    let zookeeper = Zookeeper::start();
    zookeeper.put("/app/servers/web1", "10.0.0.1:80");
    zookeeper.set_readable("/app/servers/web1", false);
    let fixture = fixture();
    fixture.write("app.conf", "kept\n");
    let node = zookeeper.node();
    let daemon = fixture.spawn(&args(&node, &["--watch"]));
    assert!(
        wait_for(Duration::from_secs(30), || daemon
            .log()
            .contains("zookeeper store refused the credentials")),
        "the refusal is logged as one\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(log.contains("/app/servers/web1"), "names the znode: {log}");
    assert!(!log.contains("unavailable"), "{log}");
    assert_eq!(fixture.read("app.conf"), "kept\n");

    zookeeper.set_readable("/app/servers/web1", true);
    expect_content(
        &fixture,
        &daemon,
        "/app/servers/web1=10.0.0.1:80\n",
        "read once the znode may be read",
    );
    let log = daemon.log();
    assert_eq!(log.matches("refused the credentials").count(), 1, "{log}");
    assert_eq!(
        log.matches("accepts the credentials again").count(),
        1,
        "{log}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}
