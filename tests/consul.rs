//! The Consul store, against the in-repo stand-in of `tests/common/consul.rs`: Consul cannot be
//! installed on this machine, so these tests run against a server that follows Consul's
//! documented HTTP API (KV with blocking queries and `X-Consul-Index`, the catalog and health
//! endpoints, ACL tokens, datacenters) instead of a real agent. A token the agent stops
//! accepting while reconfd watches is a refusal, logged as one.

mod common;

use std::time::Duration;

use common::consul::Consul;
use common::{Fixture, expect_file, wait_for};

fn args<'a>(consul: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--backend", "consul", "--node", consul];
    args.extend_from_slice(extra);
    args
}

/// A resource rendering `/app/servers/*` into `app.conf`.
fn kv_fixture() -> Fixture {
    let fixture = Fixture::new();
    fixture.template(
        "app.tmpl",
        "{% for kv in gets(key=\"/app/servers/*\") %}server {{ kv.key | base }} {{ kv.value }}\n{% endfor %}",
    );
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n",
    );
    fixture
}

#[test]
fn onetime_reads_the_kv_store_with_a_token_and_a_datacenter() {
    let consul = Consul::start(Some("s3cret"));
    consul.put("app/servers/web1", "10.0.0.1:80");
    consul.put("app/servers/web2", "10.0.0.2:80");
    consul.put("other/key", "not mine");
    let fixture = kv_fixture();
    let url = consul.url();
    let run = fixture.run(&args(
        &url,
        &["--onetime", "--auth-token", "s3cret", "--datacenter", "dc1"],
    ));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        fixture.read("app.conf"),
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n"
    );

    let run = fixture.run(&args(&url, &["--onetime", "--auth-token", "wrong"]));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("ACL not found"), "{run:?}");
    assert!(run.stderr.contains(&url), "names the agent: {run:?}");

    // The token can also come from Consul's own variable.
    let run = common::Run::from(
        fixture
            .command(&args(&url, &["--onetime"]))
            .env("CONSUL_HTTP_TOKEN", "s3cret")
            .output()
            .expect("run"),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
}

#[test]
fn watch_follows_kv_changes_and_an_agent_restart() {
    let mut consul = Consul::start(None);
    consul.put("app/servers/web1", "10.0.0.1:80");
    let fixture = kv_fixture();
    let url = consul.url();
    let daemon = fixture.spawn(&args(&url, &["--watch"]));
    expect_file(
        &fixture,
        &daemon,
        "app.conf",
        "server web1 10.0.0.1:80\n",
        "initial",
    );
    consul.put("app/servers/web2", "10.0.0.2:80");
    expect_file(
        &fixture,
        &daemon,
        "app.conf",
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "put",
    );
    consul.delete("app/servers/web1");
    expect_file(
        &fixture,
        &daemon,
        "app.conf",
        "server web2 10.0.0.2:80\n",
        "delete",
    );

    // A change made while the agent is down is picked up once it is back.
    consul.stop();
    assert!(
        wait_for(Duration::from_secs(30), || daemon
            .log()
            .contains("consul store unavailable")),
        "the agent's absence noticed\n{}",
        daemon.log()
    );
    consul.put("app/servers/web3", "10.0.0.3:80");
    consul.restart();
    expect_file(
        &fixture,
        &daemon,
        "app.conf",
        "server web2 10.0.0.2:80\nserver web3 10.0.0.3:80\n",
        "change across the restart",
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// The scenario of a monitoring box going down and coming back: an instance whose health
/// check fails leaves the rendered file, and returns when the check passes again.
#[test]
fn instances_follow_their_health_checks() {
    let consul = Consul::start(None);
    consul.register("web-1", "web", "node1", "10.0.0.1", 8080);
    consul.register("web-2", "web", "node2", "10.0.0.2", 8080);
    consul.register("db-1", "db", "node3", "10.0.0.3", 5432);
    let fixture = Fixture::new();
    fixture.template(
        "lb.tmpl",
        "{% for s in service(name=\"web\") %}server {{ s.node }} {{ s.address }}:{{ s.port }}\n{% endfor %}",
    );
    fixture.resource(
        "lb",
        "src = \"lb.tmpl\"\ndest = \"lb.conf\"\nkeys = [\"/_consul/services/web\"]\n",
    );
    fixture.template(
        "all.tmpl",
        "{% for s in services() %}{{ s.name }}:{{ s.tags | join(sep=\",\") }}\n{% endfor %}",
    );
    fixture.resource(
        "all",
        "src = \"all.tmpl\"\ndest = \"all.conf\"\nkeys = [\"/_consul/services\"]\n",
    );
    let url = consul.url();
    let daemon = fixture.spawn(&args(&url, &["--watch"]));
    let both = "server node1 10.0.0.1:8080\nserver node2 10.0.0.2:8080\n";
    expect_file(&fixture, &daemon, "lb.conf", both, "both healthy");
    expect_file(
        &fixture,
        &daemon,
        "all.conf",
        "db:http\nweb:http\n",
        "services()",
    );

    consul.set_passing("web-1", false);
    expect_file(
        &fixture,
        &daemon,
        "lb.conf",
        "server node2 10.0.0.2:8080\n",
        "the failing instance leaves",
    );
    consul.set_passing("web-1", true);
    expect_file(
        &fixture,
        &daemon,
        "lb.conf",
        both,
        "it comes back when it passes",
    );
    consul.deregister("web-2");
    expect_file(
        &fixture,
        &daemon,
        "lb.conf",
        "server node1 10.0.0.1:8080\n",
        "a deregistered instance leaves",
    );
    consul.deregister("db-1");
    expect_file(
        &fixture,
        &daemon,
        "all.conf",
        "web:http\n",
        "a deregistered service",
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_token_refused_while_watching_is_logged_as_such_and_the_file_stays_until_it_is_accepted() {
    let consul = Consul::start(Some("s3cret"));
    consul.put("app/servers/web1", "10.0.0.1:80");
    let fixture = kv_fixture();
    let url = consul.url();
    let daemon = fixture.spawn(&args(&url, &["--watch", "--auth-token", "s3cret"]));
    expect_file(
        &fixture,
        &daemon,
        "app.conf",
        "server web1 10.0.0.1:80\n",
        "initial render",
    );

    // The token is replaced; the query already waiting still answers this change.
    assert!(
        wait_for(Duration::from_secs(30), || consul.blocking_queries() > 0),
        "the watch follows the agent\n{}",
        daemon.log()
    );
    consul.set_token(Some("rotated"));
    consul.put("app/servers/web2", "10.0.0.2:80");
    let both = "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n";
    expect_file(&fixture, &daemon, "app.conf", both, "the answer in flight");
    assert!(
        wait_for(Duration::from_secs(30), || daemon
            .log()
            .contains("consul store refused the credentials")),
        "the refusal is logged as one\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(log.contains("ACL not found"), "{log}");
    assert!(!log.contains("unavailable"), "{log}");
    consul.put("app/servers/web3", "10.0.0.3:80");
    assert_eq!(fixture.read("app.conf"), both, "nothing read while refused");

    consul.set_token(Some("s3cret"));
    expect_file(
        &fixture,
        &daemon,
        "app.conf",
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\nserver web3 10.0.0.3:80\n",
        "read once the token is accepted again",
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
